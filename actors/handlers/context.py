"""What a handler is given: its task, its files, its limits, and a way to run tools."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from batchfarm.actors.errors import TaskCancelled
from batchfarm.actors.handlers import tool
from batchfarm.actors.handlers.tool import Limits, ToolResult
from batchfarm.actors.messages import TaskBody
from batchfarm.actors.settings import MediaSettings

__all__ = ["LazyFolder", "TaskContext", "ToolResult"]


class LazyFolder:
    """A context's folder, made on first use: a handler that never touches it costs nothing.

    Most short tasks (``noop``, ``checksum`` without a manifest) write no file, and making
    then removing a folder per task was a fifth of a worker's time on them. Reading the
    attribute makes the folder (and its parents) if it is not there yet.
    """

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self._slot = f"_{name}_path"
        self._made = f"_{name}_made"

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> LazyFolder: ...

    @overload
    def __get__(self, instance: object, owner: type[Any] | None = None) -> Path: ...

    def __get__(self, instance: object | None, owner: type[Any] | None = None) -> Any:
        if instance is None:
            # No class-level value: the dataclass field has no default.
            raise AttributeError(self._slot)
        values = instance.__dict__
        path: Path = values[self._slot]
        if not values.get(self._made):
            path.mkdir(parents=True, exist_ok=True)
            values[self._made] = True
        return path

    def __set__(self, instance: object, value: Path) -> None:
        instance.__dict__[self._slot] = Path(value)
        instance.__dict__[self._made] = False


@dataclass(repr=False)  # a repr must not make the folders
class TaskContext:
    """What a handler gets. It never sees the worker's internals.

    The worker downloads the task's inputs into local files, builds this, calls the handler in
    a thread, then uploads every file the handler left in ``output_dir`` under
    ``task.output_prefix``. A handler reports progress through ``progress`` and stops soon
    after ``cancelled()`` turns true, by calling :meth:`check_cancelled` between steps (and
    :meth:`run_tool` does it for the tools it runs).
    """

    task: TaskBody
    #: ``task.params`` with ``params_ref`` already merged by the worker.
    params: Mapping[str, Any]
    #: Local copies of ``task.inputs``, in the same order.
    inputs: list[Path]
    media: MediaSettings
    #: Threads a tool may use (1 for a pinned worker).
    threads: int
    #: Report the fraction done, 0 to 1.
    progress: Callable[[float], None]
    #: True once the task must stop.
    cancelled: Callable[[], bool]
    # Last: a LazyFolder has no class-level default, but type checkers think it has one.
    #: An empty folder (made on first use); files left here are the task's outputs.
    output_dir: LazyFolder = LazyFolder()
    #: A private temporary folder (made on first use), removed after the task; tools run in it.
    scratch: LazyFolder = LazyFolder()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task.task_id!r}, handler={self.task.handler!r})"

    def run_tool(
        self,
        argv: Sequence[str],
        *,
        on_stdout_line: Callable[[str], None] | None = None,
        permanent_if: Callable[[str], bool] | None = None,
        limits: Limits | None = None,
    ) -> ToolResult:
        """Run a tool (an argv list, never a shell) in ``scratch`` and wait for it.

        Its stdin is /dev/null; it runs in a session of its own and dies with the worker.
        ``on_stdout_line`` gets each stdout line as it comes (ffmpeg ``-progress pipe:1``).
        Cancellation is polled every 50 ms: the tool's whole process group is then killed
        and :class:`TaskCancelled` raised. A non-zero exit raises :class:`TaskError` with
        the last stderr line in its message and the stderr tail attached, permanent if
        ``permanent_if(stderr_tail)`` says so. A missing program is a permanent TaskError.
        ``limits`` are OS resource limits set on the tool's process (CPU, memory, file size).
        """
        return tool.run(
            argv,
            cancelled=self.cancelled,
            cwd=self.scratch,
            on_stdout_line=on_stdout_line,
            permanent_if=permanent_if,
            limits=limits,
        )

    def check_cancelled(self) -> None:
        """Raise :class:`TaskCancelled` if the task must stop."""
        if self.cancelled():
            raise TaskCancelled("cancelled")
