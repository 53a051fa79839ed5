"""The README stays true: its config reference and task-body example match the code."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from batchfarm.actors.codec import decode_body, encode_body
from batchfarm.actors.messages import TaskBody
from batchfarm.actors.settings.model import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """The README text under ``heading`` up to the next heading of the same or higher level."""
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1 :]
    stop = re.search(rf"^#{{1,{len(level)}}} ", rest, flags=re.MULTILINE)
    return rest[: stop.start()] if stop else rest


def _reference_tables(readme: str) -> dict[str, dict[str, str]]:
    """{section: {key: default cell}} from the README's config reference."""
    tables: dict[str, dict[str, str]] = {}
    current = None
    for line in _section(readme, "### Config reference").splitlines():
        if heading := re.match(r"\*\*\[(\w+)(?:\.NAME)?\]\*\*", line):
            current = tables.setdefault(heading.group(1), {})
        elif current is not None and (row := re.match(r"\| `(\w+)` \| `(.+?)` \|", line)):
            current[row.group(1)] = row.group(2)
    return tables


def _toml_literal(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def test_config_reference_lists_every_key_with_its_default(readme):
    tables = _reference_tables(readme)
    expected = {
        section.name: {
            fld.name: _toml_literal(fld.default)
            # A table section ([classes.NAME]) documents the keys of each of its tables.
            for fld in dataclasses.fields(
                section.metadata.get("table") or section.default_factory()
            )
        }
        for section in dataclasses.fields(Settings)
    }
    assert tables == expected


def test_task_body_example_decodes_and_round_trips(readme):
    section = _section(readme, "### Task body, format 1")
    example = re.search(r"```json\n(.*?)```", section, flags=re.DOTALL)
    assert example is not None, "no JSON example under 'Task body, format 1'"
    task = decode_body(example.group(1), TaskBody)
    assert task.task_id == "trailer-2026/transcode/7"
    assert decode_body(encode_body(task), TaskBody) == task
    # The field table documents every field the format has, and no other.
    documented = set(re.findall(r"^\| `(\w+)`(?:, `(\w+)`)? \|", section, flags=re.MULTILINE))
    names = {name for pair in documented for name in pair if name}
    assert names == {"kind", "v"} | {f.name for f in dataclasses.fields(TaskBody)}


def test_job_spec_example_is_a_valid_spec(readme, tmp_path):
    from batchfarm.actors.manager.spec import parse_spec

    section = _section(readme, "## Job specs")
    example = re.search(r"```toml\n(.*?)```", section, flags=re.DOTALL)
    assert example is not None, "no TOML example under 'Job specs'"
    # The files it names, so that the submit-time checks (inputs exist) pass too.
    for name in ("clips/a.mov", "clips/b.mov", "raw/intro.mp4", "extras/x.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    data = tomllib.loads(example.group(1))
    spec = parse_spec(data, source="README.md", base_dir=tmp_path)
    assert [(s.name, s.handler, s.mode) for s in spec.stages] == [
        ("transcode", "transcode", "chain"),
        ("thumbs", "checksum", "fan_in"),
    ]
    # Every top-level and stage key in the example is documented in the field table.
    documented = set(re.findall(r"^\| `([\w.\[\]0-9]+)` \|", section, flags=re.MULTILINE))
    for key in data:
        prefixes = (f"{key}.", f"{key}[")
        assert key in documented or any(d.startswith(prefixes) for d in documented), key
    for stage in data["stages"]:
        for key in stage:
            assert f"stages[].{key}" in documented or f"stages[0].{key}" in documented, key
