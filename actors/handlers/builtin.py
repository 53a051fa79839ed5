"""Small built-in handlers: ``noop`` (overhead and long-task tests) and ``checksum``."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.context import TaskContext
from batchfarm.actors.handlers.params import Params

#: How long ``noop`` sleeps between cancellation checks, in seconds.
NOOP_STEP_S = 0.05
#: The longest ``noop`` sleep: a day (a task's time limit may stop it sooner).
MAX_SLEEP_S = 86400.0
#: ``checksum`` reads and hashes this much at a time.
CHUNK = 1024 * 1024


def noop(ctx: TaskContext) -> dict[str, Any]:
    """Do nothing and return ``{}``: the grid's overhead, measured alone.

    Param ``sleep_s`` (a number >= 0, default 0) makes it sleep that long first, in steps of
    50 ms that report progress and honour cancellation: a stand-in for long tasks.
    """
    sleep_s = noop_params(ctx.params)
    if sleep_s > 0:
        start = time.monotonic()
        while (left := sleep_s - (time.monotonic() - start)) > 0:
            ctx.check_cancelled()
            time.sleep(min(NOOP_STEP_S, left))
            ctx.progress(min(1.0, (time.monotonic() - start) / sleep_s))
        ctx.check_cancelled()
    return {}


def checksum(ctx: TaskContext) -> dict[str, Any]:
    """SHA-256 of every input, read in 1 MiB chunks.

    Returns ``{"sha256": {<input key>: <hex>}, "bytes": <total>}``. Writes nothing, unless
    param ``manifest`` names a file to write in ``sha256sum`` format (``<hex>  <key>``).
    Progress is reported and cancellation honoured between chunks.
    """
    manifest = checksum_params(ctx.params)
    keys = ctx.task.inputs
    if len(keys) != len(ctx.inputs):
        raise TaskError(
            f"checksum: the task has {len(keys)} input keys but {len(ctx.inputs)} local files"
        )
    total = sum(path.stat().st_size for path in ctx.inputs)
    done = 0
    digests: dict[str, str] = {}
    for key, path in zip(keys, ctx.inputs, strict=True):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                ctx.check_cancelled()
                digest.update(chunk)
                done += len(chunk)
                ctx.progress(done / total if total else 1.0)
        digests[key] = digest.hexdigest()
    ctx.progress(1.0)
    if manifest is not None:
        lines = "".join(f"{hexdigest}  {key}\n" for key, hexdigest in digests.items())
        (ctx.output_dir / manifest).write_text(lines, encoding="utf-8")
    return {"sha256": digests, "bytes": done}


def noop_params(params: Mapping[str, Any]) -> float:
    """``noop``'s params, checked: the seconds to sleep. Raises the task's permanent TaskError."""
    return Params("noop", params, {"sleep_s"}).number("sleep_s", 0.0, 0.0, MAX_SLEEP_S)


def checksum_params(params: Mapping[str, Any]) -> str | None:
    """``checksum``'s params, checked: the manifest's file name, or None for no manifest."""
    checked = Params("checksum", params, {"manifest"})
    return checked.file_name("manifest", "") if "manifest" in checked else None
