"""Planning: job ids, input keys, first-stage tasks and bodies, large params, later stages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from batchfarm.actors.backends.store import Store
from batchfarm.actors.codec import decode_body, encode_body
from batchfarm.actors.errors import SpecError
from batchfarm.actors.manager.plan import (
    PARAMS_INLINE_BYTES,
    SpecPlanner,
    chained_task,
    fan_in_task,
    first_tasks,
    make_plan,
    new_job_id,
    params_ref_key,
)
from batchfarm.actors.manager.spec import JobSpec, load_spec, parse_spec
from batchfarm.actors.manager.upload import input_keys
from batchfarm.actors.messages import IDENT, TaskBody
from batchfarm.actors.settings import TasksSettings
from tests.manager.specs import EXAMPLE, make_files, write_toml

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def spec_of(tmp_path: Path, tree: dict) -> JobSpec:
    return parse_spec(tree, source="test", base_dir=tmp_path)


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("Trailer 2026", "trailer-2026-"),
        ("", "job-"),
        ("  --émoji ✨ clip!!", "moji-clip-"),
        ("...", "job-"),
        ("x" * 200, "x" * 40 + "-"),
    ],
)
def test_job_ids_are_readable_and_valid(name, prefix):
    job_id = new_job_id(name, now=NOW)
    assert IDENT.fullmatch(job_id)
    assert re.fullmatch(re.escape(prefix) + r"20270115-080000-[0-9a-f]{4}", job_id), job_id
    # Four random hex digits tell apart jobs submitted in the same second.
    assert len({new_job_id(name, now=NOW) for _ in range(20)}) > 1


def test_a_job_per_input_with_bodies_that_decode(tmp_path):
    make_files(tmp_path, "clips/a.mov", "clips/b.mov", "raw/intro.mp4")
    spec = load_spec(write_toml(tmp_path, EXAMPLE.replace('after = "2h"\n', "")))
    keys = input_keys(spec, "j1")
    assert keys == [
        "jobs/j1/input/clips/a.mov",
        "jobs/j1/input/clips/b.mov",
        "jobs/j1/input/raw/intro.mp4",
    ]
    plan = make_plan(spec, "j1", keys, TasksSettings(max_attempts=7), now=NOW)

    assert [(t.stage, t.part, t.inputs, t.state) for t in plan.tasks] == [
        ("transcode", i, [key], "pending") for i, key in enumerate(keys)
    ]
    for part, body in enumerate(plan.bodies):
        assert decode_body(encode_body(body), TaskBody) == body
        assert body.output_prefix == f"jobs/j1/transcode/{part}/"
        assert (body.handler, body.params, body.params_ref) == (
            "transcode",
            {"height": 720, "preset": "veryfast"},
            None,
        )
        # The stage's own limits win over the defaults.
        assert (body.max_attempts, body.time_limit_s, body.retry_backoff_s) == (3, 1800.0, 5.0)
        assert body.enqueued_at == NOW
    job = plan.job
    assert (job.id, job.name, job.priority, job.state, job.start_at) == (
        "j1",
        "trailer-2026",
        1,
        "pending",
        None,
    )
    assert [(s.name, s.index, s.mode, s.state) for s in job.stages] == [
        ("transcode", 0, "chain", "pending"),
        ("thumbs", 1, "fan_in", "pending"),
    ]
    assert job.stages[1].reason == "waiting for stage transcode"
    assert plan.blobs == {}
    stored = JobSpec.from_stored(json.loads(json.dumps(job.spec)))
    assert stored.stages == spec.stages
    assert list(stored.keys) == keys


def test_defaults_fill_what_the_stage_leaves_out(tmp_path):
    spec = spec_of(tmp_path, {"inputs": {"keys": ["k/a"]}, "stages": [{"handler": "noop"}]})
    (body,) = make_plan(spec, "j", ["k/a"], TasksSettings(max_attempts=9), now=NOW).bodies
    assert (body.max_attempts, body.time_limit_s, body.retry_backoff_s) == (9, None, None)
    (body,) = first_tasks(spec, "j", ["k/a"], now=NOW)
    assert body.max_attempts == TasksSettings().max_attempts


def test_parts_over_a_range_each_get_every_input(tmp_path):
    tree = {
        "inputs": {"keys": ["in/a", "in/b"]},
        "stages": [
            {
                "handler": "noop",
                "parts": 4,
                "range": {"param": "sleep_s", "start": 1, "step": 0.5},
            }
        ],
    }
    plan = make_plan(spec_of(tmp_path, tree), "j", ["in/a", "in/b"], now=NOW)
    assert [b.params for b in plan.bodies] == [{"sleep_s": 1 + p * 0.5} for p in range(4)]
    assert all(b.inputs == ["in/a", "in/b"] for b in plan.bodies)
    assert [t.part for t in plan.tasks] == [0, 1, 2, 3]


def test_parts_without_inputs(tmp_path):
    plan = make_plan(spec_of(tmp_path, {"stages": [{"handler": "noop", "parts": 3}]}), "j", [])
    assert [(b.part, b.inputs, b.params) for b in plan.bodies] == [(p, [], {}) for p in range(3)]


def test_a_later_start_schedules_the_job(tmp_path):
    tree = {"after": "2h", "stages": [{"handler": "noop", "parts": 1}]}
    plan = make_plan(spec_of(tmp_path, tree), "j", [], now=NOW)
    assert (plan.job.state, plan.job.start_at) == ("scheduled", NOW + 7200)
    assert "start time" in (plan.job.reason or "")
    assert plan.tasks[0].reason == "waiting for the job's start time"
    assert plan.job.spec["start_at"] == "2027-01-15T10:00:00+00:00"
    assert JobSpec.from_stored(plan.job.spec).start_at == NOW + 7200

    past = {"start_at": "2020-01-01T00:00:00Z", "stages": [{"handler": "noop", "parts": 1}]}
    plan = make_plan(spec_of(tmp_path, past), "j", [], now=NOW)
    assert plan.job.state == "pending"


def test_large_params_travel_by_reference(tmp_path):
    big = {"table": ["x" * 100] * (PARAMS_INLINE_BYTES // 100)}
    tree = {
        "stages": [
            {
                "handler": "tests.handlers.user_handlers:shout",
                "params": big,
                "parts": 2,
                "range": {"param": "seed"},
            },
            {"handler": "tests.handlers.user_handlers:shout", "name": "next", "params": big},
        ]
    }
    spec = spec_of(tmp_path, tree)
    plan = make_plan(spec, "j", [], now=NOW)
    ref = params_ref_key("j", "shout")
    assert [(b.params, b.params_ref) for b in plan.bodies] == [
        ({"seed": 0}, ref),
        ({"seed": 1}, ref),
    ]
    assert set(plan.blobs) == {ref, params_ref_key("j", "next")}
    assert json.loads(plan.blobs[ref]) == big
    later = chained_task("j", spec.stages[1], 1, ["jobs/j/shout/1/out"], now=NOW)
    assert (later.params, later.params_ref) == ({}, params_ref_key("j", "next"))
    assert len(encode_body(later)) < 1024


def test_too_many_inputs_for_one_body_is_a_spec_error(tmp_path):
    keys = [f"uploads/{i:05d}/" + "k" * 100 for i in range(3000)]
    tree = {"inputs": {"keys": keys}, "stages": [{"handler": "noop", "parts": 1}]}
    with pytest.raises(SpecError) as caught:
        make_plan(spec_of(tmp_path, tree), "j", keys, now=NOW)
    assert str(caught.value).startswith("test: inputs: expected task bodies small enough")


def test_chained_and_fan_in_tasks(tmp_path):
    tree = {
        "inputs": {"keys": ["in/a"]},
        "stages": [
            {"handler": "noop"},
            {"handler": "checksum", "max_attempts": 5, "time_limit": 9},
            {"handler": "noop", "name": "all", "mode": "fan_in"},
        ],
    }
    spec = spec_of(tmp_path, tree)
    chained = chained_task("j", spec.stages[1], 4, ["jobs/j/noop/4/o.txt"], now=NOW)
    assert chained == TaskBody(
        job="j",
        stage="checksum",
        part=4,
        handler="checksum",
        inputs=["jobs/j/noop/4/o.txt"],
        max_attempts=5,
        time_limit_s=9.0,
        enqueued_at=NOW,
    )
    fan_in = fan_in_task("j", spec.stages[2], ["a", "b"], TasksSettings(max_attempts=2), now=NOW)
    assert (fan_in.part, fan_in.inputs, fan_in.max_attempts) == (0, ["a", "b"], 2)
    assert decode_body(encode_body(fan_in)) == fan_in
    with pytest.raises(ValueError, match="not a fan-in stage"):
        fan_in_task("j", spec.stages[1], [])
    with pytest.raises(ValueError, match="not a chained stage"):
        chained_task("j", spec.stages[2], 0, [])
    with pytest.raises(ValueError, match="not a chained stage"):
        chained_task("j", spec.stages[0], 0, [])


def test_the_store_takes_the_plan_and_the_planner_reads_it_back(tmp_path):
    make_files(tmp_path, "clips/a.mov", "raw/intro.mp4")
    spec = load_spec(write_toml(tmp_path, EXAMPLE))
    job_id = new_job_id(spec.name, now=NOW)
    plan = make_plan(spec, job_id, input_keys(spec, job_id), now=NOW)
    with Store(f"sqlite:///{tmp_path / 'grid.db'}") as store:
        assert store.create_job(plan.job, plan.tasks) == 2
        view = store.job(job_id)
        assert view is not None
        assert (view.state, view.start_at, view.priority) == ("scheduled", NOW + 7200, 1)
        stages = store.stages(job_id)
        reads: list[str] = []

        def stored_spec(job: str) -> dict:
            reads.append(job)
            found = store.job(job)
            assert found is not None
            return found.spec

        planner = SpecPlanner(stored_spec)
        outputs = [f"jobs/{job_id}/transcode/{p}/out.mp4" for p in range(2)]
        body = planner.next_task(stages[1], 0, outputs)
        assert (body.stage, body.part, body.handler, body.inputs) == (
            "thumbs",
            0,
            "checksum",
            outputs,
        )
        planner.next_task(stages[1], 0, outputs)
        assert reads == [job_id]  # read once, then cached
