"""Job inputs named by ``s3://bucket/key`` URL, as a user whose data lives in S3 names them.

An object in the grid's own bucket, under its prefix, is the key below that prefix; any
other is refused with where it has to be. The mapping is pure: no server is needed here (the
end-to-end test runs it against moto).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from batchfarm.actors.errors import SpecError
from batchfarm.actors.manager.spec import load_spec, parse_spec, spec_from_flags

GRID = "s3://media-grid/batchfarm"


def one_stage(keys: list[str], storage_url: str | None = GRID) -> tuple[str, ...]:
    tree = {"inputs": {"keys": keys}, "stages": [{"handler": "checksum"}]}
    return parse_spec(tree, source="job.toml", base_dir=Path("."), storage_url=storage_url).keys


def test_urls_in_the_grids_bucket_become_keys_below_its_prefix():
    keys = one_stage(
        [
            "s3://media-grid/batchfarm/clips/a.mp4",
            "uploads/b.mp4",
            "s3://media-grid/batchfarm/c d?.mp4",
        ]
    )
    assert keys == ("clips/a.mp4", "uploads/b.mp4", "c d?.mp4")


def test_a_grid_without_prefix_maps_the_whole_key():
    assert one_stage(["s3://media-grid/in/a.mp4"], "s3://media-grid") == ("in/a.mp4",)


def test_the_stored_spec_holds_keys_only(tmp_path):
    spec = load_spec(_toml(tmp_path, ["s3://media-grid/batchfarm/in/a.mp4"]), storage_url=GRID)
    stored = spec.to_stored(list(spec.keys), None)
    assert stored["inputs"] == {"keys": ["in/a.mp4"]}
    # ... which the manager reads back without knowing any URL.
    again = parse_spec(stored, source="spec", base_dir=Path("."))
    assert again.keys == ("in/a.mp4",)


@pytest.mark.parametrize(
    ("url", "storage_url", "fragments"),
    [
        (
            "s3://other-bucket/batchfarm/a.mp4",
            GRID,
            ["under s3://media-grid/batchfarm/", "aws s3 cp"],
        ),
        ("s3://media-grid/elsewhere/a.mp4", GRID, ["under s3://media-grid/batchfarm/"]),
        ("s3://media-grid/batchfarm", GRID, ["under s3://media-grid/batchfarm/"]),
        ("s3://media-grid/batchfarmer/a.mp4", GRID, ["under s3://media-grid/batchfarm/"]),
        ("s3://media-grid/batchfarm/a//b.mp4", GRID, ["no empty segment"]),
        ("s3://media-grid/", GRID, ["s3://bucket/key"]),
        ("https://example.com/a.mp4", GRID, ["s3://bucket/key"]),
        ("s3://media-grid/batchfarm/a.mp4", "file:///var/blobs", ["not S3"]),
        ("s3://media-grid/batchfarm/a.mp4", None, ["[storage] url", "batchfarm submit"]),
    ],
)
def test_other_urls_are_refused_naming_the_field_and_where_objects_must_be(
    url, storage_url, fragments
):
    with pytest.raises(SpecError) as caught:
        one_stage(["uploads/ok.mp4", url], storage_url)
    message = str(caught.value)
    assert caught.value.field == "inputs.keys[1]"
    assert url in message
    for fragment in fragments:
        assert fragment in message


def test_a_url_and_its_key_are_one_input():
    with pytest.raises(SpecError, match="each key once"):
        one_stage(["clips/a.mp4", "s3://media-grid/batchfarm/clips/a.mp4"])


def test_a_url_among_local_files_points_at_inputs_keys(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(
        'inputs.files = ["s3://media-grid/batchfarm/a.mp4"]\n[[stages]]\nhandler = "checksum"\n'
    )
    with pytest.raises(SpecError) as caught:
        load_spec(path, storage_url=GRID)
    assert caught.value.field == "inputs.files[0]"
    assert "inputs.keys as s3://bucket/key" in str(caught.value)


def test_command_line_keys_take_urls_and_positional_urls_name_the_flag(tmp_path):
    spec = spec_from_flags(
        "checksum", keys=["s3://media-grid/batchfarm/x/a.mp4"], base_dir=tmp_path, storage_url=GRID
    )
    assert spec.keys == ("x/a.mp4",)
    with pytest.raises(SpecError) as caught:
        spec_from_flags("checksum", ["s3://media-grid/batchfarm/x/a.mp4"], base_dir=tmp_path)
    assert caught.value.field == "INPUTS"
    assert "--key" in str(caught.value)


def _toml(folder: Path, keys: list[str]) -> Path:
    path = folder / "job.toml"
    listed = ", ".join(f'"{key}"' for key in keys)
    path.write_text(f'inputs.keys = [{listed}]\n[[stages]]\nhandler = "checksum"\n')
    return path
