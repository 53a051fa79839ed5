"""The ``fan_out`` feed mode (one task per output of the stage before) and range values."""

from __future__ import annotations

import pytest

from batchfarm.actors.api.views import expected_totals
from batchfarm.actors.backends import (
    COMPLETIONS,
    open_blobs,
    open_queue,
    open_store,
    open_task_queues,
)
from batchfarm.actors.backends.store import JobState
from batchfarm.actors.errors import SpecError
from batchfarm.actors.manager.plan import SpecPlanner, make_plan
from batchfarm.actors.manager.results import ResultsProcessor
from batchfarm.actors.manager.retry import retry_job
from batchfarm.actors.manager.spec import JobSpec
from batchfarm.actors.manager.submit import submit_job
from batchfarm.actors.messages import Completion, OutputRef, TaskBody
from tests.manager import jobs_grid
from tests.manager.results_grid import InlineWorker, completion, drive
from tests.worker.grid import make_settings


class SplittingWorker(InlineWorker):
    """An inline worker whose ``split`` tasks write ``pieces[part]`` outputs each.

    Every other task writes one output, as :class:`InlineWorker` does.
    """

    def __init__(self, *args, pieces: list[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pieces = pieces
        self.bodies: list[TaskBody] = []

    def run(self, body: TaskBody, attempt: int = 1) -> Completion:
        self.bodies.append(body)
        if body.stage != "split" or body.task_id in self.fail:
            return super().run(body, attempt)
        self.runs.append(body.task_id)
        outputs = []
        for n in range(self.pieces[body.part]):
            key = f"{body.output_prefix}piece-{n}.bin"
            info = self.blobs.put(key, f"{body.part}.{n}".encode())
            outputs.append(OutputRef(key, info.size, info.sha256))
        return completion(body, ok=True, attempt=attempt, outputs=outputs)


@pytest.fixture
def grid(tmp_path):
    settings = make_settings(tmp_path / "state")
    store = open_store(settings.store)
    queues = open_task_queues(settings.queue)
    completions = open_queue(settings.queue, COMPLETIONS)
    blobs = open_blobs(settings.storage)
    planner = SpecPlanner(lambda job_id: store.job(job_id).spec, settings.tasks)
    results = ResultsProcessor(store, queues, completions, planner)

    def worker(pieces: list[int]) -> SplittingWorker:
        return SplittingWorker(queues, completions, blobs, pieces=pieces)

    yield settings, store, queues, blobs, worker, results
    for closing in (queues, completions, blobs, store):
        closing.close()


def fan_job(blobs, inputs: int) -> JobSpec:
    keys = [f"in/{n}.bin" for n in range(inputs)]
    for n, key in enumerate(keys):
        blobs.put(key, f"input {n}".encode())
    stages = [
        {"name": "split", "handler": "noop"},
        {"name": "each", "handler": "noop", "mode": "fan_out", "max_attempts": 1},
        {"name": "join", "handler": "noop", "mode": "fan_in"},
    ]
    return jobs_grid.spec({"name": "fan", "inputs": {"keys": keys}, "stages": stages})


def submitted(settings, store, queues, spec: JobSpec) -> str:
    blobs = open_blobs(settings.storage)
    try:
        return submit_job(spec, store=store, blobs=blobs, tasks=queues, defaults=settings.tasks)
    finally:
        blobs.close()


def by_stage(store, job_id, stage):
    return sorted(store.tasks(job_id, stage=stage, limit=None), key=lambda t: t.part)


def test_each_output_of_the_stage_before_becomes_its_own_task(grid):
    settings, store, queues, blobs, make_worker, results = grid
    job_id = submitted(settings, store, queues, fan_job(blobs, inputs=2))
    worker = make_worker([2, 3])  # the two splits write 2 and 3 pieces
    drive(results, lambda: store.job(job_id).state == JobState.SUCCEEDED, between=worker)

    each = by_stage(store, job_id, "each")
    # Numbered over the splits' parts in order, then each part's outputs in order.
    assert [(t.part, t.inputs) for t in each] == [
        (0, [f"jobs/{job_id}/split/0/piece-0.bin"]),
        (1, [f"jobs/{job_id}/split/0/piece-1.bin"]),
        (2, [f"jobs/{job_id}/split/1/piece-0.bin"]),
        (3, [f"jobs/{job_id}/split/1/piece-1.bin"]),
        (4, [f"jobs/{job_id}/split/1/piece-2.bin"]),
    ]
    assert all(t.state == "succeeded" for t in each)
    # The fan-in after it ran once, over every fanned-out task's output in part order.
    (join,) = by_stage(store, job_id, "join")
    assert join.inputs == [f"jobs/{job_id}/each/{n}/out.bin" for n in range(5)]
    assert [b.task_id for b in worker.bodies].count(f"{job_id}/join/0") == 1
    # No fanned-out task was sent before every split was done.
    order = [b.stage for b in worker.bodies]
    assert order.index("each") > max(i for i, s in enumerate(order) if s == "split")
    assert {s.name: s.state for s in store.stages(job_id)} == {
        "split": "succeeded",
        "each": "succeeded",
        "join": "succeeded",
    }


def test_progress_counts_a_fan_out_stage_once_its_size_is_known(grid):
    settings, store, queues, blobs, make_worker, results = grid
    job_id = submitted(settings, store, queues, fan_job(blobs, inputs=1))
    # Before the split: one task expected per part of the stage before (the least it can be).
    assert expected_totals(store.stage_counts(job_id)) == [1, 1, 1]
    worker = make_worker([4])
    worker()  # the split runs
    results.step(10)
    assert expected_totals(store.stage_counts(job_id)) == [1, 4, 1]
    drive(results, lambda: store.job(job_id).state == JobState.SUCCEEDED, between=worker)


def test_a_stage_before_that_wrote_nothing_fails_the_job_saying_why(grid):
    settings, store, queues, blobs, make_worker, results = grid
    job_id = submitted(settings, store, queues, fan_job(blobs, inputs=1))
    worker = make_worker([0])
    drive(results, lambda: store.job(job_id).state == JobState.FAILED, between=worker)
    job = store.job(job_id)
    assert "stage 'each' (fan_out) got no inputs" in job.reason
    assert "stage 'split' wrote no outputs" in job.reason
    assert {s.name: s.state for s in store.stages(job_id)}["each"] == "failed"
    assert store.tasks(job_id, stage="each", limit=None) == []


def test_a_retry_runs_only_the_failed_fanned_out_task_with_its_own_input(grid):
    settings, store, queues, blobs, make_worker, results = grid
    job_id = submitted(settings, store, queues, fan_job(blobs, inputs=1))
    worker = make_worker([3])
    worker.fail.add(f"{job_id}/each/1")
    drive(results, lambda: store.job(job_id).state == JobState.FAILED, between=worker)
    assert store.tasks(job_id, stage="join", limit=None) == []

    worker.bodies.clear()
    assert retry_job(store, queues, job_id, settings.tasks) == 1
    drive(results, lambda: store.job(job_id).state == JobState.SUCCEEDED, between=worker)
    sent = [(b.task_id, b.inputs) for b in worker.bodies]
    assert sent == [
        (f"{job_id}/each/1", [f"jobs/{job_id}/split/0/piece-1.bin"]),
        (f"{job_id}/join/0", [f"jobs/{job_id}/each/{n}/out.bin" for n in range(3)]),
    ]


def test_fan_out_is_a_mode_of_later_stages_only():
    stages = [{"handler": "noop"}, {"name": "b", "handler": "noop", "mode": "fan_out"}]
    spec = jobs_grid.spec({"inputs": {"keys": ["a"]}, "stages": stages})
    assert spec.stages[1].mode == "fan_out"
    # The stored spec reads back the same.
    assert JobSpec.from_stored(spec.to_stored(["a"], None)).stages == spec.stages
    with pytest.raises(SpecError, match=r"stages\[0\]\.mode.*expected no from or mode"):
        jobs_grid.spec(
            {"inputs": {"keys": ["a"]}, "stages": [{"handler": "noop", "mode": "fan_out"}]}
        )
    with pytest.raises(SpecError, match=r'stages\[1\]\.mode = "each".*"fan_out"'):
        jobs_grid.spec(
            {"inputs": {"keys": ["a"]}, "stages": [stages[0], {**stages[1], "mode": "each"}]}
        )


# -- range values: one part per value ------------------------------------------------------------


def ladder_like(values, **more):
    stage = {"handler": "noop", "range": {"param": "sleep_s", "values": values}, **more}
    return jobs_grid.spec({"inputs": {"keys": ["in.mov"]}, "stages": [stage]})


def test_range_values_make_one_part_per_value_each_given_its_value():
    spec = ladder_like([0, 0.5, 1])
    assert spec.stages[0].parts == 3
    plan = make_plan(spec, "job-1", ["in.mov"])
    assert [(b.part, b.params, b.inputs) for b in plan.bodies] == [
        (0, {"sleep_s": 0}, ["in.mov"]),
        (1, {"sleep_s": 0.5}, ["in.mov"]),
        (2, {"sleep_s": 1}, ["in.mov"]),
    ]
    stored = spec.to_stored(["in.mov"], None)
    assert stored["stages"][0]["range"] == {"param": "sleep_s", "values": [0, 0.5, 1]}
    assert JobSpec.from_stored(stored).stages == spec.stages


def test_range_values_are_checked_each_against_the_handler():
    with pytest.raises(SpecError, match=r"stages\[0\]\.range\.values\[1\] = -1: expected a number"):
        ladder_like([0, -1])
    with pytest.raises(SpecError, match=r"stages\[0\]\.parts = 2: expected 3 \(one part per"):
        ladder_like([0, 1, 2], parts=2)
    with pytest.raises(SpecError, match=r"stages\[0\]\.range\.values = \[\]: expected a list of 1"):
        ladder_like([])
    with pytest.raises(SpecError, match=r"stages\[0\]\.range\.start.*not both"):
        ladder_like([1], range={"param": "sleep_s", "values": [1], "start": 0})


def ladder_spec(values):
    stages = [
        {"handler": "ladder", "range": {"param": "rendition", "values": values}},
        {"handler": "hls", "mode": "fan_in"},
    ]
    return jobs_grid.spec({"inputs": {"keys": ["in.mov"]}, "stages": stages})


def test_a_ladder_spec_is_one_task_per_rendition_then_one_packaging_task():
    spec = ladder_spec([{"height": 720, "video_bitrate": "2800k"}, "h264-480p"])
    plan = make_plan(spec, "job-1", ["in.mov"])
    assert [b.params for b in plan.bodies] == [
        {"rendition": {"height": 720, "video_bitrate": "2800k"}},
        {"rendition": "h264-480p"},
    ]
    assert (spec.stages[1].handler, spec.stages[1].mode) == ("hls", "fan_in")


def test_a_bad_rendition_is_named_where_the_spec_has_it():
    with pytest.raises(
        SpecError, match=r"stages\[0\]\.range\.values\[1\]\.height = 721: expected an even"
    ):
        ladder_spec([{"height": 720}, {"height": 721}])
    with pytest.raises(SpecError, match=r"stages\[0\]\.range\.values\[0\]\.heigth: unknown param"):
        ladder_spec([{"heigth": 720}])
    with pytest.raises(SpecError, match=r"stages\[0\]\.range\.values\[0\] = 7: expected a preset"):
        ladder_spec([7])
