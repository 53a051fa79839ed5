"""Jobs through the HTTP API: submit, list, look at, cancel, tasks and results."""

from __future__ import annotations

from batchfarm.actors.backends import TASKS
from batchfarm.actors.manager.plan import new_job_id
from tests.api.apigrid import API, keys_spec, noop_spec


def post_job(grid, spec, job_id=None):
    body = {"spec": spec} if job_id is None else {"id": job_id, "spec": spec}
    return grid.client.post(f"{API}/jobs", json=body)


def queued_messages(grid) -> int:
    return grid.tasks.named(TASKS).depth().visible


def test_a_posted_job_is_listed_and_shown_with_its_stage_and_progress(grid):
    response = post_job(grid, noop_spec(parts=3))
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    assert response.json() == {"id": job_id, "state": "running", "created": True}
    assert job_id.startswith("api-test-")
    assert queued_messages(grid) == 3

    listed = grid.client.get(f"{API}/jobs").json()["jobs"]
    assert [job["id"] for job in listed] == [job_id]
    job = listed[0]
    assert job["tasks"] == {"total": 3, "queued": 3}
    assert (job["total"], job["done"], job["progress"]) == (3, 0, 0.0)
    assert job["why"] == "waiting for a node: none is up"
    assert job["priority"] == "normal"

    detail = grid.client.get(f"{API}/jobs/{job_id}").json()
    assert [(s["name"], s["state"], s["total"]) for s in detail["stages"]] == [
        ("noop", "running", 3)
    ]
    assert detail["stages"][0]["why"] == "waiting for a node: none is up"
    assert detail["failures"] == []

    grid.run_tasks()
    detail = grid.client.get(f"{API}/jobs/{job_id}").json()
    assert (detail["state"], detail["done"], detail["progress"], detail["why"]) == (
        "succeeded",
        3,
        1.0,
        None,
    )
    assert detail["tasks"] == {"total": 3, "succeeded": 3}
    assert detail["cpu_s"] == 0.75  # the in-process worker reports 0.25 s a run
    assert detail["stages"][0]["progress"] == 1.0
    assert detail["wall_s"] >= 0


def test_a_later_stage_counts_its_parts_before_they_exist_and_says_what_it_waits_for(grid):
    for name in ("a", "b"):
        grid.blobs.put(f"uploads/{name}.bin", name.encode() * 10)
    job_id = new_job_id("sums")
    response = post_job(grid, keys_spec(["uploads/a.bin", "uploads/b.bin"]), job_id)
    assert response.status_code == 201, response.text
    assert response.json()["id"] == job_id

    detail = grid.client.get(f"{API}/jobs/{job_id}").json()
    each, fan_in = detail["stages"]
    assert (each["total"], fan_in["total"], detail["total"]) == (2, 1, 3)
    assert fan_in["tasks"] == {"total": 0}
    assert fan_in["why"] == "waiting for stage 'each'"

    grid.run_tasks()
    detail = grid.client.get(f"{API}/jobs/{job_id}").json()
    assert detail["state"] == "succeeded"
    assert [(s["name"], s["done"]) for s in detail["stages"]] == [("each", 2), ("all", 1)]

    results = grid.client.get(f"{API}/jobs/{job_id}/results").json()["results"]
    key = f"jobs/{job_id}/all/0/out.bin"
    assert results == [
        {
            "task": f"{job_id}/all/0",
            "stage": "all",
            "part": 0,
            "key": key,
            "size": grid.blobs.head(key).size,
            "url": f"{API}/blobs/{key}",
        }
    ]
    download = grid.client.get(results[0]["url"])
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.content == grid.blobs.read(key)


def test_only_objects_under_jobs_are_served(grid):
    grid.blobs.put("uploads/secret.bin", b"not for the API")
    outside = grid.client.get(f"{API}/blobs/uploads/secret.bin")
    assert outside.status_code == 404
    assert outside.json()["status"] == 404
    assert "jobs/" in outside.json()["error"]
    missing = grid.client.get(f"{API}/blobs/jobs/nope/x.bin")
    assert missing.status_code == 404
    assert "jobs/nope/x.bin" in missing.json()["error"]
    climbing = grid.client.get(f"{API}/blobs/jobs/%2E%2E/uploads/secret.bin")
    assert climbing.status_code == 404


def test_a_bad_spec_is_refused_naming_its_field_and_nothing_is_recorded(grid):
    spec = {"stages": [{"handler": "transcode", "parts": 1, "params": {"height": 721}}]}
    response = post_job(grid, spec)
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == 400
    assert body["field"] == "stages[0].params.height"
    assert "721" in body["error"]
    assert "even" in body["error"]

    typo = post_job(grid, {"stages": [{"handlr": "noop", "parts": 1}]})
    assert typo.status_code == 400
    assert typo.json()["field"] == "stages[0].handlr"
    assert "did you mean 'handler'" in typo.json()["error"]

    assert grid.client.get(f"{API}/jobs").json() == {"jobs": []}
    assert queued_messages(grid) == 0


def test_local_files_and_missing_keys_are_refused(grid):
    files = post_job(grid, {"inputs": {"files": ["clip.mov"]}, "stages": [{"handler": "noop"}]})
    assert files.status_code == 400
    assert files.json()["field"] == "inputs.files"
    assert "batchfarm submit" in files.json()["error"]

    grid.blobs.put("uploads/here.bin", b"x")
    missing = post_job(grid, keys_spec(["uploads/here.bin", "uploads/gone.bin"]))
    assert missing.status_code == 400
    assert missing.json()["field"] == "inputs.keys[1]"
    assert "uploads/gone.bin" in missing.json()["error"]
    assert grid.client.get(f"{API}/jobs").json() == {"jobs": []}
    assert queued_messages(grid) == 0


def test_a_retried_post_returns_the_same_job_and_another_spec_under_its_id_conflicts(grid):
    job_id = new_job_id("again")
    first = post_job(grid, noop_spec(parts=2), job_id)
    assert first.status_code == 201
    again = post_job(grid, noop_spec(parts=2), job_id)
    assert again.status_code == 200
    assert again.json() == {"id": job_id, "state": "running", "created": False}
    assert [job["id"] for job in grid.client.get(f"{API}/jobs").json()["jobs"]] == [job_id]
    assert queued_messages(grid) == 2  # the retry queued nothing

    other = post_job(grid, noop_spec(parts=5), job_id)
    assert other.status_code == 409
    assert job_id in other.json()["error"]
    assert queued_messages(grid) == 2


def test_a_bad_job_id_or_body_is_refused(grid):
    bad_id = post_job(grid, noop_spec(), "../etc")
    assert bad_id.status_code == 400
    assert bad_id.json()["field"] == "id"
    no_spec = grid.client.post(f"{API}/jobs", json={"id": "x"})
    assert (no_spec.status_code, no_spec.json()["field"]) == (400, "spec")
    extra = grid.client.post(f"{API}/jobs", json={"spec": noop_spec(), "priority": "high"})
    assert (extra.status_code, extra.json()["field"]) == (400, "priority")
    not_json = grid.client.post(
        f"{API}/jobs", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 400
    assert "JSON" in not_json.json()["error"]


def test_a_scheduled_job_says_when_it_starts(grid):
    response = post_job(grid, noop_spec(start_at="2031-05-01T12:00:00+00:00"))
    assert response.status_code == 201
    assert response.json()["state"] == "scheduled"
    job = grid.client.get(f"{API}/jobs/{response.json()['id']}").json()
    assert job["why"] == "waiting for its start time (2031-05-01T12:00:00Z)"
    assert job["stages"][0]["why"] == "waiting for its job's start time (2031-05-01T12:00:00Z)"
    assert queued_messages(grid) == 0
    listed = grid.client.get(f"{API}/jobs", params={"state": "running"}).json()
    assert listed == {"jobs": []}


def test_a_job_is_cancelled_once(grid):
    job_id = post_job(grid, noop_spec(parts=2)).json()["id"]
    first = grid.client.post(f"{API}/jobs/{job_id}/cancel")
    assert first.json() == {"id": job_id, "cancelled": True, "state": "cancelled"}
    second = grid.client.post(f"{API}/jobs/{job_id}/cancel")
    assert second.json() == {"id": job_id, "cancelled": False, "state": "cancelled"}
    tasks = grid.client.get(f"{API}/jobs/{job_id}/tasks").json()["tasks"]
    assert [t["state"] for t in tasks] == ["cancelled", "cancelled"]
    unknown = grid.client.post(f"{API}/jobs/nosuch-job/cancel")
    assert unknown.status_code == 404
    assert "nosuch-job" in unknown.json()["error"]


def test_tasks_are_listed_filtered_and_shown_one_by_one(grid):
    job_id = post_job(grid, noop_spec(parts=3)).json()["id"]
    tasks = grid.client.get(f"{API}/jobs/{job_id}/tasks").json()["tasks"]
    assert [t["id"] for t in tasks] == [f"{job_id}/noop/{n}" for n in range(3)]
    paged = grid.client.get(f"{API}/jobs/{job_id}/tasks", params={"limit": 1, "offset": 1})
    assert [t["part"] for t in paged.json()["tasks"]] == [1]
    none = grid.client.get(f"{API}/jobs/{job_id}/tasks", params={"state": "succeeded"})
    assert none.json() == {"tasks": []}

    task = grid.client.get(f"{API}/jobs/{job_id}/tasks/noop/1").json()
    assert (task["id"], task["state"], task["attempts"]) == (f"{job_id}/noop/1", "queued", 0)
    assert task["why"] == "waiting for a node: none is up"
    assert task["queued_at"] is None or task["queued_at"] > 0

    assert grid.client.get(f"{API}/jobs/{job_id}/tasks/noop/9").status_code == 404
    bad_state = grid.client.get(f"{API}/jobs/{job_id}/tasks", params={"state": "done"})
    assert (bad_state.status_code, bad_state.json()["field"]) == (400, "state")
    bad_stage = grid.client.get(f"{API}/jobs/{job_id}/tasks", params={"stage": "nope"})
    assert (bad_stage.status_code, bad_stage.json()["field"]) == (404, "stage")
    bad_limit = grid.client.get(f"{API}/jobs", params={"limit": 5000})
    assert (bad_limit.status_code, bad_limit.json()["field"]) == (400, "limit")


def test_a_failed_job_shows_its_failure_and_is_retried(grid):
    job_id = post_job(grid, noop_spec(parts=2)).json()["id"]
    grid.run_tasks(fail=(f"{job_id}/noop/1",))
    job = grid.client.get(f"{API}/jobs/{job_id}").json()
    assert (job["state"], job["done"], job["failed"], job["why"]) == ("failed", 1, 1, None)
    assert job["reason"].startswith(f"task {job_id}/noop/1 failed")
    [failure] = job["failures"]
    assert (failure["task"], failure["stage"], failure["part"]) == (f"{job_id}/noop/1", "noop", 1)
    assert failure["error"]["message"] == "bad input: not a clip"
    assert failure["error"]["permanent"] is True

    retried = grid.client.post(f"{API}/jobs/{job_id}/retry")
    assert retried.json() == {"id": job_id, "retried": 1, "state": "running"}
    assert queued_messages(grid) == 1
    grid.run_tasks()
    job = grid.client.get(f"{API}/jobs/{job_id}").json()
    assert (job["state"], job["done"], job["failures"]) == ("succeeded", 2, [])
    again = grid.client.post(f"{API}/jobs/{job_id}/retry")
    assert again.json() == {"id": job_id, "retried": 0, "state": "succeeded"}
    assert grid.client.post(f"{API}/jobs/nosuch/retry").status_code == 404
