"""Handlers for the results tests, named as ``tests.manager.results_handlers:<name>``."""

from __future__ import annotations

import shutil
from typing import Any

from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers import TaskContext


def copy_unless(ctx: TaskContext) -> dict[str, Any]:
    """Copy each input to ``out-<n>.bin``; fail for good if the part is in ``fail_parts``."""
    if ctx.task.part in ctx.params.get("fail_parts", []):
        raise TaskError(f"bad input in part {ctx.task.part}", permanent=True)
    for index, path in enumerate(ctx.inputs):
        shutil.copyfile(path, ctx.output_dir / f"out-{index}.bin")
    (ctx.output_dir / "note.txt").write_text(ctx.task.task_id)
    return {"copied": len(ctx.inputs)}
