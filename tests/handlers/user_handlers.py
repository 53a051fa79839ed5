"""A user's handler module, named in tests as ``tests.handlers.user_handlers:<name>``."""

from __future__ import annotations

from typing import Any

from batchfarm.actors.handlers import TaskContext

NOT_CALLABLE = 42


def shout(ctx: TaskContext) -> dict[str, Any]:
    """Write the upper-cased text param to shout.txt and return its length."""
    text = str(ctx.params.get("text", "")).upper()
    (ctx.output_dir / "shout.txt").write_text(text)
    return {"length": len(text)}
