"""The job verbs against a real grid: submit, status, watch, results, cancel, retry."""

from __future__ import annotations

import json
from pathlib import Path

from batchfarm.actors.messages import IDENT
from tests.cli.grid import blob_keys, cli, read_blob, wait_state

SLEEP = "tests.worker.handlers:sleep"
FAIL = "tests.worker.handlers:fail"

TWO_STAGES = """\
name = "demo"

[inputs]
files = ["in/*.bin"]

[[stages]]
name = "work"
handler = "tests.worker.handlers:sleep"
params = { seconds = 0.1 }

[[stages]]
name = "sums"
handler = "checksum"
mode = "fan_in"
params = { manifest = "sums.txt" }
"""


def two_stage_spec(folder: Path, parts: int = 3) -> Path:
    (folder / "in").mkdir(parents=True)
    for n in range(parts):
        (folder / "in" / f"clip{n}.bin").write_bytes(bytes([n]) * 100)
    spec = folder / "job.toml"
    spec.write_text(TWO_STAGES)
    return spec


def submitted(env: dict[str, str], *args: str) -> str:
    run = cli(env, "submit", *args)
    assert run.returncode == 0, run.stderr
    job_id = run.stdout.strip()
    assert run.stdout == f"{job_id}\n"  # the id alone, for scripts
    assert IDENT.fullmatch(job_id)
    return job_id


def test_a_two_stage_job_is_submitted_followed_and_its_results_downloaded(tmp_path, grid):
    job_id = submitted(grid, str(two_stage_spec(tmp_path)))
    assert job_id.startswith("demo-")
    assert sorted(blob_keys(grid, f"jobs/{job_id}/input/")) == [
        f"jobs/{job_id}/input/in/clip{n}.bin" for n in range(3)
    ]

    assert wait_state(grid, job_id, ("succeeded", "failed"), timeout=60) == "succeeded"
    listed = cli(grid, "status")
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout
    assert "succeeded" in listed.stdout

    shown = cli(grid, "status", job_id)
    assert shown.returncode == 0, shown.stderr
    for text in ("work", "sums", "succeeded", "Stages", "Job performance data", "compute"):
        assert text in shown.stdout

    as_json = json.loads(cli(grid, "status", "--json", job_id).stdout)
    assert [s["name"] for s in as_json["stages"]] == ["work", "sums"]
    assert as_json["progress"] == 1

    out = tmp_path / "out"
    got = cli(grid, "results", job_id, "--to", str(out))
    assert got.returncode == 0, got.stderr
    assert str(out) in got.stdout
    manifest = out / "sums" / "0" / "sums.txt"
    assert [p.relative_to(out) for p in out.rglob("*") if p.is_file()] == [Path("sums/0/sums.txt")]
    assert manifest.read_bytes() == read_blob(grid, f"jobs/{job_id}/sums/0/sums.txt")
    assert sorted(line.split()[1] for line in manifest.read_text().splitlines()) == [
        f"jobs/{job_id}/work/{n}/slept.txt" for n in range(3)
    ]

    # Again: the same files are kept; a changed one is refused, then overwritten with --force.
    assert cli(grid, "results", job_id, "--to", str(out)).returncode == 0
    manifest.write_text("edited by hand\n")
    refused = cli(grid, "results", job_id, "--to", str(out))
    assert refused.returncode == 1
    assert str(manifest) in refused.stderr
    assert "--force" in refused.stderr
    assert manifest.read_text() == "edited by hand\n"
    forced = cli(grid, "results", job_id, "--to", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert manifest.read_bytes() == read_blob(grid, f"jobs/{job_id}/sums/0/sums.txt")


def test_watch_follows_a_job_to_its_end(grid):
    job_id = submitted(grid, "--handler", SLEEP, "--param", "seconds=0.3", "--parts", "4")
    watched = cli(grid, "watch", job_id)
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.splitlines()
    assert lines[-1].startswith(f"{job_id}: succeeded")
    assert "sleep 4/4" in lines[-1]


def test_a_cancelled_job_exits_3(grid):
    job_id = submitted(grid, "--handler", SLEEP, "--param", "seconds=30", "--parts", "3")
    wait_state(grid, job_id, ("running",), timeout=30)
    cancelled = cli(grid, "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == f"{job_id}: cancelled\n"
    status = cli(grid, "status", job_id)
    assert status.returncode == 3, status.stderr
    assert "cancelled" in status.stdout
    again = cli(grid, "cancel", job_id)
    assert again.returncode == 0
    assert "already cancelled" in again.stdout


def test_a_failing_job_exits_1_with_its_error_and_can_be_retried(grid):
    args = ("--handler", FAIL, "--param", "permanent=true", "--parts", "1", "--name", "bad")
    waited = cli(grid, "submit", *args, "--wait")
    assert waited.returncode == 1, waited.stderr
    job_id = waited.stdout.strip()
    assert IDENT.fullmatch(job_id)
    assert "bad input: the clip is not a video" in waited.stderr

    status = cli(grid, "status", job_id)
    assert status.returncode == 1
    assert "Failures" in status.stdout
    assert "bad input: the clip is not a video" in status.stdout

    retried = cli(grid, "retry", job_id)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.startswith(f"{job_id}: 1 task resubmitted")
    assert wait_state(grid, job_id, ("failed",), timeout=30) == "failed"


def test_a_bad_spec_is_refused_naming_the_field_before_anything_is_uploaded(tmp_path, grid):
    spec = two_stage_spec(tmp_path)
    spec.write_text(
        TWO_STAGES.replace('name = "demo"', 'name = "badspec"')
        .replace('handler = "checksum"', 'handler = "transcode"\nparams = { height = 721 }')
        .replace('params = { manifest = "sums.txt" }\n', "")
    )
    refused = cli(grid, "submit", str(spec))
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.startswith(f"batchfarm: {spec}: stages[1].params.height = 721: ")

    missing = tmp_path / "missing.toml"
    missing.write_text(TWO_STAGES.replace("in/*.bin", "nowhere/*.bin"))
    run = cli(grid, "submit", str(missing))
    assert run.returncode == 1
    assert "inputs.files[0]" in run.stderr

    flags = cli(grid, "submit", "--handler", "transcode", "--param", "crf=99", "--parts", "1")
    assert flags.returncode == 1
    assert "--param crf = 99" in flags.stderr

    jobs = json.loads(cli(grid, "status", "--json").stdout)["jobs"]
    assert not [job for job in jobs if job["id"].startswith("badspec-")]
    assert not [key for key in blob_keys(grid) if key.startswith("jobs/badspec-")]
