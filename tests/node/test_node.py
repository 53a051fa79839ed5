"""``batchfarm node`` as a real process: pinning, crashes, drain, reload, retries, no manager."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from batchfarm.actors.backends import open_blobs
from batchfarm.actors.messages import AbandonedRun
from batchfarm.supervisor import cpus
from tests.media import make_clip
from tests.node.nodeproc import descendants, env_for, gone
from tests.worker.grid import (
    Completions,
    completions,
    events,
    submit,
    task,
    tasks_queue,
    wait_for,
)

CORES = cpus.available_cpus()


def depth(settings):
    with tasks_queue(settings) as queue:
        return queue.depth()


def test_each_worker_is_pinned_to_its_own_core(start_node):
    node = start_node(env=env_for(node_workers=len(CORES)))
    workers = node.wait_workers(len(CORES))
    # A worker pins itself first thing in its process, before it builds its actor.
    expected = [[c] for c in CORES]
    wait_for(lambda: sorted(w.cpu_affinity() for w in workers) == expected, what="pinning")
    assert sorted(w.cpu_affinity() for w in workers) == expected


def test_auto_under_taskset_runs_one_worker_per_allowed_core(start_node):
    node = start_node(prefix=("taskset", "-c", str(CORES[0])))
    [worker] = node.wait_workers(1)
    time.sleep(1.0)  # no second worker turns up later
    assert len(node.workers()) == 1
    assert worker.cpu_affinity() == [CORES[0]]
    assert node.ps.cpu_affinity() == [CORES[0]]


def test_until_empty_runs_the_queue_dry_and_exits_0(start_node, settings):
    submit(settings, *[task(n, "noop") for n in range(20)])
    node = start_node("--until-empty")
    assert node.wait(60) == 0, node.output()
    events = completions(settings)
    assert sorted(e.part for e in events if e.ok) == list(range(20))
    assert depth(settings).backlog == 0


def test_a_task_five_times_longer_than_the_visibility_is_delivered_once(start_node, settings):
    submit(settings, task(0, "sleep", params={"seconds": 5.0}))
    node = start_node("--until-empty", env=env_for(queue_visibility_timeout=1, node_workers=2))
    assert node.wait(60) == 0, node.output()
    [event] = completions(settings)
    assert (event.ok, event.attempt) == (True, 1)


def test_failing_hanging_and_crashing_tasks_are_retried_then_dead_lettered(start_node, settings):
    submit(
        settings,
        task(0, "fail", max_attempts=2),
        task(1, "hang", time_limit_s=0.5, max_attempts=2, params={"seconds": 60}),
        task(2, "crash"),
        task(3, "copy"),
    )
    node = start_node(
        env=env_for(
            node_workers=2,
            queue_max_receives=2,
            queue_visibility_timeout=2,
            node_restart_limit=50,
            tasks_cancel_grace=1,
        )
    )
    wait_for(lambda: depth(settings).dead == 3, timeout=90, what="3 tasks dead-lettered")
    assert node.proc.poll() is None, "the node stopped"
    events = completions(settings)
    by_part = {part: [e for e in events if e.part == part] for part in range(4)}
    # A run can be lost with no report when the task was waiting in a worker that the crashing
    # task killed (its receive counts): so "the last run is final", not "two reports".
    assert [(e.attempt, e.final) for e in by_part[0]][-1] == (2, True)
    assert not any(e.ok for e in by_part[0])
    # The hung handler's worker was replaced; its task failed on time, then for good.
    assert {e.error.type for e in by_part[1] if e.error} == {"TaskCancelled"}
    assert by_part[1][-1].final
    # A task that kills its worker reports nothing; the queue dead-letters it after 2 receives.
    assert by_part[2] == []
    assert [e.ok for e in by_part[3]] == [True]
    # The node keeps serving: a new task still runs.
    submit(settings, task(4, "copy"))
    wait_for(lambda: any(e.part == 4 and e.ok for e in completions(settings)), what="part 4")
    assert "gave up" not in node.output()


def test_kill_9_of_a_worker_mid_transcode_gives_one_output(start_node, settings, tmp_path):
    clip = make_clip(tmp_path / "in.mp4", seconds=6, width=640, height=360)
    submit(
        settings,
        task(0, "transcode", inputs=["raw/in.mp4"], params={"height": 240, "preset": "medium"}),
        inputs={"raw/in.mp4": clip.read_bytes()},
    )
    node = start_node(env=env_for(node_workers=1, queue_visibility_timeout=30))
    [worker] = node.wait_workers(1)
    seen = Completions(settings)

    def ffmpeg_running():
        return any("ffmpeg" in p.name() for p in worker.children(recursive=True))

    wait_for(ffmpeg_running, what="ffmpeg running under the worker")
    tool_pids = descendants(worker.pid)
    worker.kill()
    wait_for(lambda: gone(tool_pids), timeout=5, what="ffmpeg gone with its worker")
    # The supervisor starts a new worker, hands the task back at once (not after 30 s), and
    # the task runs again from the start.
    wait_for(lambda: any(e.ok for e in seen()), timeout=60, what="the task done")
    ok = [e for e in seen() if e.ok]
    assert [(e.part, e.attempt) for e in ok] == [(0, 2)]
    blobs = open_blobs(settings.storage)
    assert [i.key for i in blobs.iter_list("jobs/")] == ["jobs/job1/s1/0/out.mp4"]
    blobs.close()
    assert depth(settings).backlog == 0
    assert node.proc.poll() is None


def test_kill_9_of_a_worker_mid_task_reports_its_run_abandoned(start_node, settings):
    submit(settings, task(0, "sleep", params={"seconds": 4.0}))
    node = start_node(env=env_for(node_workers=1, queue_visibility_timeout=30))
    [worker] = node.wait_workers(1)
    wait_for(lambda: depth(settings).in_flight == 1, what="the task running")
    time.sleep(2.5)  # the worker tells its supervisor what it runs every second
    killed_at = time.time()
    worker.kill()
    seen: list = []

    def finished() -> bool:
        seen.extend(events(settings))
        return any(e.ok for e in seen)

    wait_for(finished, timeout=60, what="the task done")
    # The supervisor reports the killed run (for its node time); the next run finishes it.
    [lost] = [e for e in seen if isinstance(e, AbandonedRun)]
    assert (lost.part, lost.node, lost.worker, lost.attempt) == (0, "node-a", 0, 1)
    assert lost.started_at < killed_at <= lost.finished_at
    assert [(e.part, e.attempt) for e in seen if e.ok] == [(0, 2)]


def test_kill_9_of_the_node_takes_its_workers_and_tools_along(start_node, settings, tmp_path):
    submit(
        settings, task(0, "sleep", params={"seconds": 4}), task(1, "sleep", params={"seconds": 4})
    )
    node = start_node(env=env_for(node_workers=2, queue_visibility_timeout=2))
    wait_for(lambda: depth(settings).in_flight == 2, what="both tasks running")
    tree = descendants(node.pid)
    assert len(tree) >= 2
    os.kill(node.pid, signal.SIGKILL)
    wait_for(lambda: gone(tree), timeout=5, what="no stray process left")
    # After the visibility timeout another node finishes both tasks.
    other = start_node("--until-empty", name="node-b", env=env_for(node_workers=2))
    assert other.wait(90) == 0, other.output()
    assert sorted((e.part, e.ok) for e in completions(settings)) == [(0, True), (1, True)]


def test_sigterm_drains_running_tasks_and_hands_back_the_rest(start_node, settings):
    submit(settings, *[task(n, "sleep", params={"seconds": 2.0}) for n in range(6)])
    node = start_node(env=env_for(node_workers=2, node_prefetch=2))
    wait_for(lambda: depth(settings).in_flight >= 2, what="tasks running")
    time.sleep(0.3)
    node.signal(signal.SIGTERM)
    assert node.wait(30) == 0, node.output()
    finished = [e for e in completions(settings) if e.ok]
    assert len(finished) == 2  # the two running ones finished
    left = depth(settings)
    assert (left.visible, left.in_flight) == (4, 0)  # the rest handed back at once


def test_a_second_sigterm_stops_running_tasks_and_hands_them_back(start_node, settings):
    submit(
        settings, task(0, "sleep", params={"seconds": 60}), task(1, "sleep", params={"seconds": 60})
    )
    node = start_node(env=env_for(node_workers=2, node_drain_grace=60))
    wait_for(lambda: depth(settings).in_flight == 2, what="both tasks running")
    node.signal(signal.SIGTERM)
    time.sleep(0.5)
    node.signal(signal.SIGTERM)
    code = node.wait(20)
    assert code == 0, node.output()
    assert completions(settings) == []
    assert depth(settings).visible == 2


def test_the_drain_grace_ends_with_tasks_handed_back(start_node, settings):
    submit(settings, task(0, "sleep", params={"seconds": 60}))
    node = start_node(env=env_for(node_workers=1, node_drain_grace=1))
    wait_for(lambda: depth(settings).in_flight == 1, what="the task running")
    started = time.monotonic()
    node.signal(signal.SIGTERM)
    assert node.wait(20) == 0, node.output()
    assert time.monotonic() - started < 10
    assert depth(settings).visible == 1


def test_sighup_shrinks_and_grows_the_workers_without_dropping_a_task(
    start_node, settings, tmp_path
):
    config = tmp_path / "node.toml"
    config.write_text("[node]\nworkers = 2\nprefetch = 0\n")
    node = start_node(env={"BATCHFARM_CONFIG": str(config)})
    node.wait_workers(2)
    seen = Completions(settings)
    submit(settings, *[task(n, "sleep", params={"seconds": 2.0}) for n in range(2)])
    wait_for(lambda: depth(settings).in_flight == 2, what="both tasks running")
    config.write_text("[node]\nworkers = 1\nprefetch = 0\n")
    node.signal(signal.SIGHUP)
    # The worker told to go finishes its task first: both tasks complete, each on its first run.
    wait_for(lambda: len(seen()) == 2, what="both tasks done")
    node.wait_workers(1)
    assert sorted((e.part, e.ok, e.attempt) for e in seen()) == [(0, True, 1), (1, True, 1)]
    config.write_text("[node]\nworkers = 2\nprefetch = 0\n")
    node.signal(signal.SIGHUP)
    node.wait_workers(2)
    submit(settings, *[task(n, "sleep", params={"seconds": 1.0}) for n in range(2, 4)])
    wait_for(lambda: len(seen()) == 4, what="two more tasks done")
    assert {e.worker for e in seen()[2:]} == {0, 1}  # both workers took one


def test_a_bad_config_on_reload_keeps_the_running_one(start_node, tmp_path):
    config = tmp_path / "node.toml"
    config.write_text("[node]\nworkers = 1\n")
    node = start_node(env={"BATCHFARM_CONFIG": str(config)})
    node.wait_workers(1)
    config.write_text("[node]\nworkerz = 2\n")
    node.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in node.output(), what="the refusal logged")
    assert "did you mean 'workers'" in node.output()
    assert len(node.workers()) == 1


def test_a_bad_config_stops_the_start_with_one_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[node]\nprefetch = 12\n")
    done = subprocess.run(
        [sys.executable, "-m", "batchfarm.actors.cli", "--config", str(config), "node"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"batchfarm: {config}: [node] prefetch = 12: expected an integer from 0 to 9"
    )


def test_workers_that_keep_crashing_are_given_up_and_reported(start_node, settings):
    submit(settings, *[task(n, "crash") for n in range(20)])
    node = start_node(
        env=env_for(
            node_workers=1, node_restart_limit=3, node_restart_window=60, queue_max_receives=100
        )
    )
    code = node.wait(60)
    assert code == 1
    output = node.output()
    assert "gave_up" in output
    assert "every worker was given up on" in output
    assert psutil.pid_exists(node.pid) is False or node.proc.poll() is not None


def test_idle_cores_are_lent_to_the_last_running_task_and_taken_back(start_node, settings):
    node = start_node(env=env_for(node_workers=len(CORES), node_prefetch=0))
    workers = node.wait_workers(len(CORES))
    expected = sorted([c] for c in CORES)
    wait_for(lambda: sorted(w.cpu_affinity() for w in workers) == expected, what="pinning")
    submit(settings, task(0, "sleep", params={"seconds": 30}))
    # One task, the other cores idle, nothing waiting: its worker may use every core.
    wait_for(
        lambda: any(w.cpu_affinity() == sorted(CORES) for w in workers),
        timeout=10,
        what="the busy worker unpinned",
    )
    # Work for every core again: each worker back on its own core.
    submit(settings, *[task(n, "sleep", params={"seconds": 30}) for n in range(1, len(CORES))])
    wait_for(
        lambda: sorted(w.cpu_affinity() for w in workers) == expected,
        timeout=10,
        what="every worker pinned again",
    )
