"""ffmpeg's -progress lines become the task's fraction done, and ``watch`` shows it."""

from __future__ import annotations

from rich.console import Console

from batchfarm.actors.cli.watch_cmd import RunningTasks, frame
from batchfarm.actors.handlers.transcode import progress_reader


def test_progress_lines_become_fractions():
    seen: list[float] = []
    on_line = progress_reader(seen.append, 4.0)
    for line in [
        "frame=10",
        "out_time_us=1000000",
        "out_time_us=N/A",
        "out_time_us=-5",
        "out_time_us=3000000",
        "out_time_us=9000000",
        "progress=continue",
        "progress=end",
    ]:
        on_line(line)
    assert seen == [0.25, 0.0, 0.75, 1.0, 1.0]
    # Without a known duration only the end is known.
    unknown: list[float] = []
    reader = progress_reader(unknown.append, None)
    reader("out_time_us=1000000")
    reader("progress=end")
    assert unknown == [1.0]


class _Api:
    """What RunningTasks reads of the API: the job's running tasks and the nodes' heartbeats."""

    def running_tasks(self, job: str, limit: int) -> list[dict[str, object]]:
        return [{"stage": "encode", "part": 0, "node_id": "n1", "worker": 0, "started_at": 90.0}]

    def nodes(self) -> list[dict[str, object]]:
        workers = [
            {"index": 0, "task": "j1/encode/0", "progress": 0.42},
            {"index": 1, "task": "j1/encode/1", "progress": 0.9},
            {"index": 2, "task": "other/encode/0", "progress": 0.1},
        ]
        return [{"id": "n1", "workers": workers}]


def test_watch_shows_each_running_tasks_fraction_done():
    job = {"id": "j1", "state": "running", "tasks": {"running": 2}, "stages": []}
    running = RunningTasks()(_Api(), job, now=100.0)  # type: ignore[arg-type]
    assert [(r.task, r.progress) for r in running] == [("encode/0", 0.42), ("encode/1", 0.9)]
    console = Console(width=100, record=True)
    console.print(frame(job, running, now=100.0))
    text = console.export_text()
    assert "done" in text
    assert "42%" in text
    assert "90%" in text
