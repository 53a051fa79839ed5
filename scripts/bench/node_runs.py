"""The runs the node benchmark compares: generated clips, ``xargs -P2 ffmpeg``, one node.

Used by ``node_bench.py``. Scripts do not import tests, so the few lines of
``tests/media.py`` (clips, probing) and ``tests/worker/grid.py`` (settings, submitting,
reading completions) this needs are repeated here.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.queues import Queue as MpQueue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import psutil

from batchfarm.actors.backends import COMPLETIONS, TASKS, open_blobs, open_queue
from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.backends.queue import Outgoing
from batchfarm.actors.codec import decode_body, encode_body
from batchfarm.actors.errors import TaskError
from batchfarm.actors.handlers.mediainfo import read_info
from batchfarm.actors.handlers.transcode import TranscodeOptions, transcode_argv
from batchfarm.actors.messages import Completion, TaskBody
from batchfarm.actors.settings import Settings, load

JOB = "bench"
BATCH = 10
#: Workers of the node under test, and ffmpeg processes xargs runs at once.
PARALLEL = 2
#: Seconds a run may take before the benchmark gives up on it.
RUN_TIMEOUT_S = 900.0


#: A 1-minute load average above this at the start means the machine is not quiet.
QUIET_LOAD = 0.5


def warn_if_busy() -> float:
    """Return the load average, saying so when the machine is not quiet (figures vary more)."""
    load = os.getloadavg()[0]
    if load > QUIET_LOAD:
        print(f"warning: load average {load:.2f} at the start: the machine is not quiet")
    return load


def stats(values: list[float]) -> dict[str, float]:
    """Count, min, median, max and sum of ``values``, rounded to milliseconds."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
        "sum": round(sum(values), 3),
    }


class BenchError(Exception):
    """A run failed or produced a wrong result: the benchmark has no figure to give."""


# -- CPU -------------------------------------------------------------------------------------


class CpuMeter:
    """Machine-wide CPU shares since it was made, over all cores (from /proc/stat)."""

    def __init__(self) -> None:
        self._start = psutil.cpu_times()

    def read(self) -> tuple[float, float]:
        """(busy, steal) as percentages of all cores' time since the start.

        Busy is time this machine ran anything; steal is time its virtual CPUs wanted to run
        but the host ran something else (noise from outside, counted apart).
        """
        end = psutil.cpu_times()
        # guest and guest_nice are already counted in user and nice on Linux.
        names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
        delta = {n: getattr(end, n, 0.0) - getattr(self._start, n, 0.0) for n in names}
        total = sum(delta.values()) or 1.0
        busy = total - delta["idle"] - delta["iowait"] - delta["steal"]
        return 100.0 * busy / total, 100.0 * delta["steal"] / total


# -- clips -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipSpec:
    """The generated input clips: how many, and their length, size and frame rate."""

    count: int
    seconds: float
    width: int
    height: int
    fps: int

    @property
    def key(self) -> str:
        """The cache folder's name: clips made with other parameters live elsewhere."""
        return f"{self.width}x{self.height}-{self.fps}fps-{self.seconds:g}s"

    def describe(self) -> str:
        return (
            f"{self.count} clips of {self.seconds:g} s, {self.width}x{self.height} {self.fps} fps"
        )


def make_clips(ffmpeg: str, spec: ClipSpec, cache: Path) -> list[Path]:
    """The spec's clips (testsrc2 video, a sine tone each), made once and kept in ``cache``."""
    folder = cache / spec.key
    folder.mkdir(parents=True, exist_ok=True)
    clips = [folder / f"clip{i:02d}.mp4" for i in range(spec.count)]
    missing = [(i, c) for i, c in enumerate(clips) if not c.is_file()]
    for start in range(0, len(missing), PARALLEL):
        running = [
            (clip, subprocess.Popen(_clip_argv(ffmpeg, spec, i, clip), stderr=subprocess.PIPE))
            for i, clip in missing[start : start + PARALLEL]
        ]
        for clip, proc in running:
            _, err = proc.communicate()
            part = clip.with_name(f"part-{clip.name}")
            if proc.returncode != 0:
                part.unlink(missing_ok=True)
                raise BenchError(f"making {clip} failed: {err.decode(errors='replace')[-2000:]}")
            part.rename(clip)  # whole clips only: a run cut short leaves no half clip
    return clips


def _clip_argv(ffmpeg: str, spec: ClipSpec, index: int, clip: Path) -> list[str]:
    video = f"testsrc2=size={spec.width}x{spec.height}:rate={spec.fps}:duration={spec.seconds}"
    tone = f"sine=frequency={220 + 40 * index}:sample_rate=44100:duration={spec.seconds}"
    return [
        *(ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"),
        *("-f", "lavfi", "-i", video, "-f", "lavfi", "-i", tone),
        *("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"),
        *("-c:a", "aac", "-b:a", "64k", "-f", "mp4", str(clip.with_name(f"part-{clip.name}"))),
    ]


def mp4_problem(ffmpeg: str, path: Path, height: int, seconds: float) -> str | None:
    """What is wrong with a transcoded output (not an H.264 + AAC MP4 of that height and
    length), or None."""
    if not path.is_file():
        return f"{path}: missing"
    with path.open("rb") as file:
        if file.read(8)[4:8] != b"ftyp":
            return f"{path}: not an MP4 (no ftyp box at the start)"
    try:
        info = read_info(path)
    except TaskError as error:
        return f"{path}: {error}"
    found = (
        info.video.codec if info.video else None,
        info.video.height if info.video else None,
        info.audio.codec if info.audio else None,
    )
    if found != ("h264", height, "aac"):
        return f"{path}: (video, height, audio) = {found}, expected ('h264', {height}, 'aac')"
    if info.duration_s is None or abs(info.duration_s - seconds) > 0.5:
        return f"{path}: lasts {info.duration_s} s, expected {seconds:g} s"
    return None


# -- the xargs side --------------------------------------------------------------------------


@dataclass
class Run:
    """One timed run of one side."""

    wall_s: float
    #: Machine-wide busy and steal shares over the run (see :class:`CpuMeter`).
    cpu_percent: float
    steal_percent: float
    items: int
    #: A node run's completion events and when the node was launched (epoch seconds).
    events: list[Completion] = field(default_factory=list)
    launched: float = 0.0

    @property
    def rate(self) -> float:
        return self.items / self.wall_s


def run_xargs(
    ffmpeg: str, clips: list[Path], options: TranscodeOptions, work: Path, seconds: float
) -> Run:
    """``xargs -P2`` running the handler's own ffmpeg command (``-threads 1``) on local files."""
    out = work / "xargs-out"
    out.mkdir()
    folder = clips[0].parent
    argv = transcode_argv(ffmpeg, folder / "{}.mp4", out / "{}.mp4", options, threads=1)
    names = "".join(f"{clip.stem}\n" for clip in clips).encode()
    log = work / "xargs.log"
    with log.open("wb") as err:
        meter = CpuMeter()
        started = time.perf_counter()
        done = subprocess.run(
            ["xargs", f"-P{PARALLEL}", "-I{}", *argv],
            input=names,
            stdout=subprocess.DEVNULL,  # ffmpeg's -progress lines; the handler reads them
            stderr=err,
            check=False,
            timeout=RUN_TIMEOUT_S,
        )
        wall = time.perf_counter() - started
        cpu = meter.read()
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise BenchError(f"xargs ffmpeg exited with {done.returncode}:\n{tail}")
    for clip in clips:
        problem = mp4_problem(ffmpeg, out / clip.name, options.height, seconds)
        if problem:
            raise BenchError(f"xargs output {problem}")
    return Run(wall, *cpu, len(clips))


# -- the node side ---------------------------------------------------------------------------


def grid_settings(state: Path) -> Settings:
    """Embedded settings (queue, blob store) under the state folder ``state``."""
    return load(None, {"BATCHFARM_GRID_STATE_DIR": str(state)}).settings


def send_tasks(settings: Settings, tasks: list[TaskBody]) -> None:
    """Send task bodies to the grid's task queue, ten to a batch."""
    with open_queue(settings.queue, TASKS) as queue:
        for start in range(0, len(tasks), BATCH):
            queue.send_batch([Outgoing(encode_body(t)) for t in tasks[start : start + BATCH]])


def start_node(state: Path, prefetch: int, wait_s: float) -> subprocess.Popen[bytes]:
    """``batchfarm node --until-empty`` with two pinned workers, its output in a log file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFARM_")}
    env.update(
        BATCHFARM_GRID_STATE_DIR=str(state),
        BATCHFARM_NODE_WORKERS=str(PARALLEL),
        BATCHFARM_NODE_PIN="true",
        BATCHFARM_NODE_PREFETCH=str(prefetch),
        BATCHFARM_QUEUE_WAIT=str(wait_s),
        # No manager runs: heartbeats go nowhere, as on a node whose manager is away.
        BATCHFARM_NODE_MANAGER="tcp://127.0.0.1:1",
    )
    command = [sys.executable, "-m", "batchfarm.actors.cli", "node", "--name", "bench"]
    with (state.parent / "node.log").open("wb") as log:
        return subprocess.Popen(
            [*command, "--until-empty"], env=env, stdout=log, stderr=subprocess.STDOUT
        )


def finish_node(proc: subprocess.Popen[bytes], state: Path, timeout: float = 60.0) -> None:
    """Wait for the node to exit on its own; anything but exit code 0 fails the run."""
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    if code != 0:
        log = (state.parent / "node.log").read_text(errors="replace")[-3000:]
        raise BenchError(f"the node exited with {code} (expected 0):\n{log}")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    # Its workers die with it (they run with a parent-death signal), their ffmpegs with them.
    proc.kill()
    proc.wait()


def read_completions(settings: Settings) -> list[Completion]:
    """Every completion event in the queue (read and deleted), once the node has exited."""
    found: list[Completion] = []
    with open_queue(settings.queue, COMPLETIONS) as queue:
        while batch := queue.receive(BATCH, wait_s=0, visibility_s=60):
            for message in batch:
                event = decode_body(message.body, Completion)
                assert isinstance(event, Completion)
                found.append(event)
            queue.delete_batch([m.receipt for m in batch]).raise_for_failures()
    return found


def watch_completions(
    settings: Settings, count: int, proc: subprocess.Popen[bytes]
) -> list[tuple[float, Completion]]:
    """Read completion events as they come: (when this process saw it, the event)."""
    seen: list[tuple[float, Completion]] = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    with open_queue(settings.queue, COMPLETIONS) as queue:
        while len(seen) < count:
            exited = proc.poll() is not None
            batch = queue.receive(BATCH, wait_s=0 if exited else 1.0, visibility_s=60)
            now = time.time()
            for message in batch:
                event = decode_body(message.body, Completion)
                assert isinstance(event, Completion)
                seen.append((now, event))
            if batch:
                queue.delete_batch([m.receipt for m in batch]).raise_for_failures()
            elif exited or time.monotonic() > deadline:
                break
    return seen


def transcode_params(options: TranscodeOptions) -> dict[str, Any]:
    """The ``transcode`` handler's params that ask for the output ``options`` describe."""
    return {
        "height": options.height,
        "crf": options.crf,
        "preset": options.preset,
        "audio_bitrate": options.audio_bitrate,
    }


def run_node(  # noqa: PLR0917 - the same shape as run_xargs, plus the prefetch
    ffmpeg: str,
    clips: list[Path],
    options: TranscodeOptions,
    work: Path,
    seconds: float,
    prefetch: int,
) -> Run:
    """Transcode the clips through one node; inputs and outputs go through the blob store.

    The clips are stored and the tasks sent before the node starts. The run is timed from
    launching the node to seeing the last completion event: that event is sent after the
    task's output is stored, so the span holds all of the node's work for every task (the
    handler's ``finished_at`` is earlier, before the upload) and none of the idle checks
    ``--until-empty`` makes before exiting.
    """
    state = work / "state"
    settings = grid_settings(state)
    blobs = open_blobs(settings.storage)
    try:
        for clip in clips:
            blobs.put_file(f"inputs/{clip.name}", clip)
        params, now = transcode_params(options), time.time()
        tasks = [
            TaskBody(
                job=JOB,
                stage="transcode",
                part=part,
                handler="transcode",
                inputs=[f"inputs/{clip.name}"],
                params=params,
                enqueued_at=now,
            )
            for part, clip in enumerate(clips)
        ]
        send_tasks(settings, tasks)

        meter = CpuMeter()
        launched = time.time()
        proc = start_node(state, prefetch, wait_s=1.0)
        try:
            seen = watch_completions(settings, len(clips), proc)
            last_seen = max((when for when, _ in seen), default=time.time())
            cpu = meter.read()
            _check_events([event for _, event in seen], len(clips), "transcode")
        except BaseException:
            _kill(proc)
            raise
        finish_node(proc, state)
        events = [event for _, event in seen]
        _check_outputs(ffmpeg, events, blobs, work / "check", options, seconds)
    finally:
        blobs.close()
    return Run(last_seen - launched, *cpu, len(clips), events=events, launched=launched)


def _check_events(events: list[Completion], count: int, what: str) -> None:
    failed = [e for e in events if not e.ok]
    if failed:
        error = failed[0].error
        detail = f"{error.type}: {error.message}\n{error.stderr_tail}" if error else "no error"
        raise BenchError(f"{len(failed)} {what} tasks failed; part {failed[0].part}: {detail}")
    parts = sorted(e.part for e in events)
    if parts != list(range(count)):
        raise BenchError(
            f"{what}: completions for parts {parts[:20]}..., expected 0 to {count - 1}"
        )


def _check_outputs(  # noqa: PLR0917 - one call site, all of it needed
    ffmpeg: str,
    events: list[Completion],
    blobs: BlobStore,
    folder: Path,
    options: TranscodeOptions,
    seconds: float,
) -> None:
    """Every output is in the blob store, whole, and a valid MP4 of the asked height."""
    folder.mkdir()
    for event in events:
        keys = [o.key for o in event.outputs]
        expected = f"jobs/{event.task_id}/out.mp4"
        if keys != [expected]:
            raise BenchError(f"part {event.part}: outputs {keys}, expected [{expected!r}]")
        local = folder / f"{event.part}.mp4"
        info = blobs.get_file(expected, local)
        if info.size != event.outputs[0].size:
            raise BenchError(f"{expected}: {info.size} bytes stored, completion says more")
        problem = mp4_problem(ffmpeg, local, options.height, seconds)
        if problem:
            raise BenchError(f"node output {expected}: {problem}")
        local.unlink()


# -- no-ops ----------------------------------------------------------------------------------


def noop_tasks(count: int) -> list[TaskBody]:
    now = time.time()
    return [
        TaskBody(job=JOB, stage="noop", part=n, handler="noop", enqueued_at=now)
        for n in range(count)
    ]


def run_noop_node(count: int, work: Path, prefetch: int) -> Run:
    """``count`` no-op tasks through one node; timed from the first start to the last finish.

    The events are read once the node has exited, so that reading them takes no CPU from it.
    The CPU share covers the whole life of the node, its start-up and idle checks included.
    """
    state = work / "state"
    settings = grid_settings(state)
    send_tasks(settings, noop_tasks(count))
    meter = CpuMeter()
    finish_node(start_node(state, prefetch, wait_s=1.0), state, timeout=RUN_TIMEOUT_S)
    cpu = meter.read()
    events = read_completions(settings)
    _check_events(events, count, "no-op")
    span = max(e.finished_at for e in events) - min(e.started_at for e in events)
    return Run(span, *cpu, count)


def floor_consumer(state: str, start: Barrier, results: MpQueue[Any]) -> None:
    """One of two processes draining the task queue with receive(10) + delete_batch."""
    settings = grid_settings(Path(state))
    taken = 0
    with open_queue(settings.queue, TASKS) as queue:
        start.wait()
        first = last = time.time()
        while batch := queue.receive(BATCH, wait_s=0, visibility_s=60):
            queue.delete_batch([m.receipt for m in batch]).raise_for_failures()
            last = time.time()
            taken += len(batch)
    results.put((first, last, taken))


def run_queue_floor(count: int, work: Path, ctx: Any) -> Run:
    """The embedded queue's own floor: two processes receive and delete the same bodies."""
    state = work / "state"
    send_tasks(grid_settings(state), noop_tasks(count))
    start, results = ctx.Barrier(PARALLEL + 1), ctx.Queue()
    procs = [
        ctx.Process(target=floor_consumer, args=(str(state), start, results))
        for _ in range(PARALLEL)
    ]
    for proc in procs:
        proc.start()
    start.wait()
    meter = CpuMeter()
    reports = [results.get(timeout=RUN_TIMEOUT_S) for _ in procs]
    cpu = meter.read()
    for proc in procs:
        proc.join()
    taken = sum(n for _, _, n in reports)
    if taken != count:
        raise BenchError(f"queue floor: consumers took {taken} messages, expected {count}")
    span = max(last for _, last, _ in reports) - min(first for first, _, _ in reports)
    return Run(span, *cpu, count)
