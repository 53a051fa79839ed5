"""Fixtures for handler tests: a factory of task contexts that record what handlers report."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from batchfarm.actors.handlers import TaskContext, ToolResult, clear_cache
from batchfarm.actors.messages import TaskBody
from batchfarm.actors.settings import MediaSettings


class Harness:
    """One task's context, with the progress it reported and a switch to cancel it."""

    def __init__(self, ctx: TaskContext, progress: list[float], cancel: threading.Event) -> None:
        self.ctx = ctx
        self.progress = progress
        self.cancel = cancel


@dataclass
class RecordingContext(TaskContext):
    """A real TaskContext that also keeps the argv of every tool it ran."""

    argvs: list[list[str]] = field(default_factory=list)

    def run_tool(self, argv: Sequence[str], **kwargs: Any) -> ToolResult:
        self.argvs.append([str(a) for a in argv])
        return super().run_tool(argv, **kwargs)


MakeCtx = Callable[..., Harness]


@pytest.fixture
def make_ctx(tmp_path: Path) -> MakeCtx:
    """Build a context: ``make_ctx(handler, params=..., inputs=[paths], keys=[...])``."""
    count = 0

    def make(
        handler: str = "noop",
        *,
        params: Mapping[str, Any] | None = None,
        inputs: Sequence[Path] = (),
        keys: Sequence[str] | None = None,
        threads: int = 1,
        media: MediaSettings | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Harness:
        nonlocal count
        count += 1
        root = tmp_path / f"task{count}"
        (root / "out").mkdir(parents=True)
        (root / "scratch").mkdir()
        keys = list(keys) if keys is not None else [f"inputs/{p.name}" for p in inputs]
        body = TaskBody(
            job="job1",
            stage="s1",
            part=count,
            handler=handler,
            inputs=keys,
            params=dict(params or {}),
        )
        progress: list[float] = []
        cancel = threading.Event()
        ctx = RecordingContext(
            task=body,
            params=dict(params or {}),
            inputs=list(inputs),
            output_dir=root / "out",
            scratch=root / "scratch",
            media=media or MediaSettings(),
            threads=threads,
            progress=progress.append,
            cancelled=cancelled or cancel.is_set,
        )
        return Harness(ctx, progress, cancel)

    return make


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    # Each test resolves names in its own environment (entry points come and go with tmp dirs).
    clear_cache()
    yield
    clear_cache()
