"""Shared by the job-spec tests: spec files written to a folder, and error checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchfarm.actors.errors import SpecError
from batchfarm.actors.manager.spec import load_spec

#: The README's full example, minus its inputs (each test makes its own files).
EXAMPLE = """\
name = "trailer-2026"
priority = "high"
after = "2h"
[inputs]
files = ["clips/*.mov", "raw/intro.mp4"]
[[stages]]
name = "transcode"
handler = "transcode"
params = { height = 720, preset = "veryfast" }
max_attempts = 3
time_limit = 1800
retry_backoff = 5
node_class = "default"
[[stages]]
name = "thumbs"
handler = "checksum"
from = "transcode"
mode = "fan_in"
"""


def make_files(base: Path, *names: str, size: int = 3) -> list[Path]:
    """Create files (and their folders) under ``base``, ``size`` bytes each."""
    paths = []
    for name in names:
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode()[:1] * size)
        paths.append(path)
    return paths


def write_toml(folder: Path, text: str, name: str = "job.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def write_json(folder: Path, tree: dict[str, Any], name: str = "job.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(tree), encoding="utf-8")
    return path


def refused(path: Path, field: str, *fragments: str) -> SpecError:
    """Load ``path``, expecting a SpecError naming the file, ``field`` and what was expected."""
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return check_error(caught.value, str(path), field, *fragments)


def check_error(error: SpecError, source: str, field: str, *fragments: str) -> SpecError:
    message = str(error)
    assert error.source == source, message
    assert error.field == field, message
    assert message.startswith(f"{source}: {field}"), message
    assert "expected" in message, message
    for fragment in fragments:
        assert fragment in message, message
    return error


def one_stage(extra: str = "", handler: str = "noop", stage: str = "") -> str:
    """A spec of one ``parts = 2`` stage (no inputs needed), with extra top-level text."""
    return f'{extra}\n[[stages]]\nhandler = "{handler}"\nparts = 2\n{stage}\n'
