"""Uploading a job's inputs: streamed to the blob store, progress to the total, keys checked."""

from __future__ import annotations

import hashlib
import os

import pytest

from batchfarm.actors.backends.blobs.local import LocalBlobStore
from batchfarm.actors.errors import SpecError
from batchfarm.actors.manager.spec import load_spec
from batchfarm.actors.manager.upload import upload_inputs
from tests.manager.specs import check_error, write_toml

CHUNK = 64 * 1024


@pytest.fixture
def blobs(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs", chunk_size=CHUNK)
    yield store
    store.close()


def test_files_upload_whole_with_progress_to_the_total(tmp_path, blobs):
    clips = tmp_path / "job" / "clips"
    (clips / "deep").mkdir(parents=True)
    contents = {
        "clips/big.mov": os.urandom(5 * CHUNK + 123),
        "clips/deep/small.mov": b"tiny",
        "clips/empty.mov": b"",
    }
    for name, data in contents.items():
        (tmp_path / "job" / name).write_bytes(data)
    blobs.put("uploads/ready.mov", b"already here")
    spec = load_spec(
        write_toml(
            tmp_path / "job",
            'inputs.files = ["clips"]\ninputs.keys = ["uploads/ready.mov"]\n'
            '[[stages]]\nhandler = "checksum"\n',
        )
    )
    calls: list[tuple[int, int]] = []
    keys = upload_inputs(spec, blobs, "j1", lambda done, total: calls.append((done, total)))

    assert keys == [
        "jobs/j1/input/clips/big.mov",
        "jobs/j1/input/clips/deep/small.mov",
        "jobs/j1/input/clips/empty.mov",
        "uploads/ready.mov",
    ]
    for name, data in contents.items():
        stored = blobs.read(f"jobs/j1/input/{name}")
        assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
    total = sum(len(d) for d in contents.values())
    assert calls[0] == (0, total)
    assert calls[-1] == (total, total)
    assert len(calls) >= 7  # byte progress within the big file, not per file
    done = [d for d, _ in calls]
    assert done == sorted(done)
    assert {t for _, t in calls} == {total}


def test_a_missing_key_stops_the_upload_before_any_byte(tmp_path, blobs):
    (tmp_path / "a.mov").write_bytes(b"data")
    spec = load_spec(
        write_toml(
            tmp_path,
            'inputs.files = ["a.mov"]\ninputs.keys = ["uploads/gone.mov"]\n'
            '[[stages]]\nhandler = "checksum"\n',
        )
    )
    calls: list[tuple[int, int]] = []
    with pytest.raises(SpecError) as caught:
        upload_inputs(spec, blobs, "j1", lambda done, total: calls.append((done, total)))
    check_error(caught.value, spec.source, "inputs.keys[0]", "an object in the blob store")
    assert list(blobs.iter_list("jobs/")) == []
    assert calls == []


def test_a_file_gone_since_the_spec_was_read(tmp_path, blobs):
    path = tmp_path / "a.mov"
    path.write_bytes(b"data")
    spec = load_spec(
        write_toml(tmp_path, 'inputs.files = ["a.mov"]\n[[stages]]\nhandler = "noop"\n')
    )
    path.unlink()
    with pytest.raises(SpecError) as caught:
        upload_inputs(spec, blobs, "j1")
    check_error(caught.value, spec.source, "inputs.files", "until it is uploaded")
    assert list(blobs.iter_list("jobs/")) == []


def test_a_file_that_grew_since_the_spec_was_read_counts_whole(tmp_path, blobs):
    path = tmp_path / "a.mov"
    path.write_bytes(b"x" * 10)
    spec = load_spec(
        write_toml(tmp_path, 'inputs.files = ["a.mov"]\n[[stages]]\nhandler = "noop"\n')
    )
    path.write_bytes(b"x" * (CHUNK + 5))
    calls: list[tuple[int, int]] = []
    upload_inputs(spec, blobs, "j1", lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, CHUNK + 5)  # sizes are taken again at upload time
    assert calls[-1] == (CHUNK + 5, CHUNK + 5)
    assert blobs.head("jobs/j1/input/a.mov").size == CHUNK + 5
