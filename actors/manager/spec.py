"""Job specs: a TOML or JSON file, a stored spec, or CLI flags, read into a checked JobSpec.

A spec is one tree, the same in TOML and JSON: the job's name, priority, start time and
deadline, its inputs (local files, directories and globs, or objects already in the blob
store, by key or, on S3, by ``s3://bucket/key`` URL), and its
stages, each a handler with params, fed by the stage before it. Everything is checked here,
before anything is uploaded or queued: unknown keys (with a did-you-mean), names, handlers, a
built-in handler's params, limits, the line of stages (no cycle, gap or forward reference)
and that every input file exists. The first problem stops the read with a one-line
:class:`~batchfarm.actors.errors.SpecError` naming the file, the field's path
(``stages[1].params.height``), its value and what was expected.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchfarm.actors.errors import NO_VALUE, SpecError
from batchfarm.actors.manager import values as v
from batchfarm.actors.manager.stages import MAX_PARTS, PartRange, StageSpec, read_stage, stage_dict
from batchfarm.actors.manager.upload import InputFile, check_keys, find_files

__all__ = [
    "PRIORITIES",
    "InputFile",
    "JobSpec",
    "PartRange",
    "StageSpec",
    "load_spec",
    "parse_spec",
    "spec_from_flags",
]

#: Priority classes, by name, as the store ranks them (higher runs first).
PRIORITIES = {"normal": 0, "high": 1}
_NAME_LEN = 128
_JOB_KEYS = ("name", "priority", "start_at", "after", "deadline", "inputs", "stages")
_INPUT_KEYS = ("files", "keys")


@dataclass(frozen=True)
class JobSpec:
    """A checked job spec: what to run, over which inputs, when. Picklable.

    ``start_at`` is an absolute start (seconds since the epoch), ``after_s`` one relative to
    submission; at most one is set. ``deadline`` is when the job should be done by (seconds
    since the epoch; the autoscaler sizes the fleet for it). ``files`` are local files to
    upload, ``keys`` objects already in the blob store; the first stage's parts follow their
    order, files first.
    """

    stages: tuple[StageSpec, ...]
    name: str = ""
    priority: str = "normal"
    start_at: float | None = None
    after_s: float | None = None
    deadline: float | None = None
    files: tuple[InputFile, ...] = ()
    keys: tuple[str, ...] = ()
    #: Where the spec came from, for messages: a file, "command line" or "stored spec".
    source: str = field(default="spec", compare=False)

    @property
    def input_count(self) -> int:
        """The job's inputs: files and keys."""
        return len(self.files) + len(self.keys)

    def stage(self, name: str) -> StageSpec:
        """The stage called ``name``; KeyError if there is none."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"job spec has no stage {name!r}")

    def next_stage(self, name: str) -> StageSpec | None:
        """The stage fed by stage ``name``, or None after the last."""
        index = self.stage(name).index + 1
        return self.stages[index] if index < len(self.stages) else None

    def start_time(self, now: float) -> float | None:
        """When the job may start, for a job submitted at ``now``; None for at once."""
        if self.start_at is not None:
            return self.start_at
        return None if self.after_s is None else now + self.after_s

    def to_stored(self, input_keys: Sequence[str], start_at: float | None) -> dict[str, Any]:
        """The spec as the store keeps it: plain JSON, its inputs as their blob keys.

        A stored spec is itself a valid spec (:meth:`from_stored` reads it back): it names
        no local file, only objects in the store, and an absolute start time.
        """
        out: dict[str, Any] = {"name": self.name, "priority": self.priority}
        if start_at is not None:
            out["start_at"] = datetime.fromtimestamp(start_at, UTC).isoformat()
        if self.deadline is not None:
            out["deadline"] = datetime.fromtimestamp(self.deadline, UTC).isoformat()
        out["inputs"] = {"keys": list(input_keys)}
        out["stages"] = [stage_dict(stage) for stage in self.stages]
        return out

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> JobSpec:
        """Read back a spec kept by :meth:`to_stored`, without the submit-time checks.

        Handlers and params were checked when the job was submitted; a handler uninstalled
        since fails its tasks, it does not make the job unreadable.
        """
        return parse_spec(data, source="stored spec", base_dir=Path("."), submit=False)


def load_spec(path: Path, *, storage_url: str | None = None) -> JobSpec:
    """Read and check the spec file at ``path`` (``.toml`` or ``.json``).

    Relative input paths are relative to the file's folder; ``storage_url`` is the grid's
    ``[storage] url``, against which ``s3://`` inputs are read. Raises :class:`SpecError`.
    """
    source = str(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise SpecError(source, "file", NO_VALUE, "expected a .toml or .json job spec")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(source, "file", NO_VALUE, "expected an existing file") from None
    except OSError as e:
        raise SpecError(source, "file", NO_VALUE, f"expected a readable file ({e})") from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text) if suffix == ".toml" else _json(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as e:
        kind = "TOML" if suffix == ".toml" else "JSON"
        raise SpecError(source, "syntax", NO_VALUE, f"expected valid {kind} ({e})") from None
    return parse_spec(data, source=source, base_dir=path.parent, storage_url=storage_url)


def _json(text: str) -> Any:
    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            raise ValueError("a key repeats in one object")
        return out

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    return json.loads(text, object_pairs_hook=no_dupes, parse_constant=no_constant)


def parse_spec(
    data: Mapping[str, Any],
    *,
    source: str,
    base_dir: Path,
    submit: bool = True,
    storage_url: str | None = None,
) -> JobSpec:
    """Check a spec tree (parsed TOML or JSON) and build its :class:`JobSpec`.

    ``base_dir`` anchors relative input paths. With ``submit`` (the default) handler names
    and built-in params are checked and input files looked up; without, only the structure.
    ``storage_url`` (the grid's ``[storage] url``) turns ``s3://bucket/key`` entries of
    ``inputs.keys`` into keys; without it they are refused (a stored spec holds keys only).
    """
    top = v.Table(source, data, "", _JOB_KEYS)
    name = top.text("name", "", "text")
    if len(name) > _NAME_LEN or any(ord(c) < 32 for c in name):
        expected = f"expected text of at most {_NAME_LEN} characters, no control characters"
        raise SpecError(source, "name", name, expected)
    priority = top.text("priority", "normal", v.choices(PRIORITIES))
    if priority not in PRIORITIES:
        raise SpecError(source, "priority", priority, f"expected {v.choices(PRIORITIES)}")
    if "start_at" in top and "after" in top:
        raise top.error("after", top.get("after"), "expected start_at or after, not both")
    start_at = v.start_time(source, top.get("start_at")) if "start_at" in top else None
    after_s = v.duration(source, top.get("after")) if "after" in top else None
    deadline = None
    if "deadline" in top:
        deadline = check_deadline(source, "deadline", top.get("deadline"), start_at, submit=submit)

    inputs = v.Table(source, top.get("inputs", {}), "inputs", _INPUT_KEYS)
    files: tuple[InputFile, ...] = ()
    if "files" in inputs:
        entries = v.text_list(source, inputs.get("files"), "inputs.files")
        files = find_files(source, entries, base_dir) if submit else ()
    entries = v.text_list(source, inputs.get("keys", []), "inputs.keys")
    keys = check_keys(source, entries, storage_url)

    raw_stages = top.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        shown = NO_VALUE if raw_stages is None else raw_stages
        expected = "expected a list of one or more stages ([[stages]] tables)"
        raise SpecError(source, "stages", shown, expected)
    # Every stage's name, unnamed ones by their handler's, for messages about ``from``.
    names = [
        raw.get("name", str(raw.get("handler", "")).rpartition(":")[2])
        if isinstance(raw, dict)
        else None
        for raw in raw_stages
    ]
    stages: list[StageSpec] = []
    for raw in raw_stages:
        stages.append(read_stage(source, raw, stages, names, submit=submit))
    spec = JobSpec(
        stages=tuple(stages),
        name=name,
        priority=priority,
        start_at=start_at,
        after_s=after_s,
        deadline=deadline,
        files=files,
        keys=keys,
        source=source,
    )
    first = stages[0]
    if submit and first.parts is None and spec.input_count == 0:
        expected = "expected at least one input for a first stage of one task per input"
        raise SpecError(source, "inputs", NO_VALUE, f"{expected} (or parts = N)")
    if first.parts is None and spec.input_count > MAX_PARTS:
        expected = f"expected at most {MAX_PARTS:,} inputs, one task each"
        raise SpecError(source, "inputs", spec.input_count, expected)
    return spec


def check_deadline(
    source: str, at: str, value: Any, start_at: float | None = None, *, submit: bool = True
) -> float:
    """A job's ``deadline`` (date-time with its zone) in epoch seconds; ``at`` names the field.

    On submission it must lie ahead: after now and after the job's ``start_at``. A stored
    spec's deadline may have passed since (the job is then late, not invalid).
    """
    deadline = v.start_time(source, value, at)
    if submit and deadline <= time.time():
        raise SpecError(source, at, value, "expected a time in the future")
    if submit and start_at is not None and deadline <= start_at:
        raise SpecError(source, at, value, "expected a time after the job's start_at")
    return deadline


# ---------------------------------------------------------------------------------------
# Command-line flags for one-stage jobs

#: Spec fields as the flags that set them, for messages about flags.
_FLAGS = (
    ("stages[0].params.", "--param "),
    ("stages[0].handler", "--handler"),
    ("stages[0].name", "--handler"),
    ("stages[0].parts", "--parts"),
    ("stages[0].max_attempts", "--max-attempts"),
    ("stages[0].time_limit", "--time-limit"),
    ("stages[0].node_class", "--node-class"),
    ("stages[0].range", "--range"),
    ("inputs.files", "INPUTS"),
    ("inputs.keys", "--key"),
    ("inputs", "INPUTS"),
    ("start_at", "--at"),
    ("after", "--after"),
    ("deadline", "--deadline"),
    ("priority", "--priority"),
    ("name", "--name"),
)


def spec_from_flags(
    handler: str,
    inputs: Sequence[str] = (),
    *,
    params: Sequence[str] = (),
    keys: Sequence[str] = (),
    name: str | None = None,
    priority: str | None = None,
    at: str | None = None,
    after: str | None = None,
    deadline: str | None = None,
    parts: int | None = None,
    max_attempts: int | None = None,
    time_limit: float | None = None,
    node_class: str | None = None,
    base_dir: Path | None = None,
    storage_url: str | None = None,
) -> JobSpec:
    """The one-stage job ``batchfarm submit --handler H --param k=v INPUTS...`` describes.

    Built as a spec tree and checked like a file, so flags and files make the same jobs.
    ``params`` are ``key=value`` texts, the value read as JSON when it parses (``720``,
    ``true``, ``"x"``) and as text otherwise (``veryfast``). ``inputs`` are files, folders
    and globs relative to ``base_dir`` (default: the current folder); ``keys`` may be
    ``s3://`` URLs, read against ``storage_url`` as in a file. Errors name the flag.
    """
    stage: dict[str, Any] = {"handler": handler, "params": dict(_param(p) for p in params)}
    for key, value in (
        ("parts", parts),
        ("max_attempts", max_attempts),
        ("time_limit", time_limit),
        ("node_class", node_class),
    ):
        if value is not None:
            stage[key] = value
    tree: dict[str, Any] = {"stages": [stage]}
    for key, value in (
        ("name", name),
        ("priority", priority),
        ("start_at", at),
        ("deadline", deadline),
    ):
        if value is not None:
            tree[key] = value
    if after is not None:
        tree["after"] = after
    if inputs or keys:
        tree["inputs"] = {"files": list(inputs)} if inputs else {}
        if keys:
            tree["inputs"]["keys"] = list(keys)
    try:
        return parse_spec(
            tree, source="command line", base_dir=base_dir or Path.cwd(), storage_url=storage_url
        )
    except SpecError as e:
        raise SpecError(e.source, _flag(e.field), e.value, e.expected) from None


def _param(flag: str) -> tuple[str, Any]:
    key, sep, raw = flag.partition("=")
    if not sep or not key.strip():
        raise SpecError("command line", "--param", flag, "expected key=value")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def _flag(spec_field: str) -> str:
    for prefix, flag in _FLAGS:
        if spec_field.startswith(prefix):
            rest = spec_field[len(prefix) :]
            return flag + rest if flag.endswith(" ") else flag
    return spec_field
