"""The web page in headless Chromium against a real grid: progress, results, nodes, cancel."""

from __future__ import annotations

import re

import pytest

from tests.cli.grid import api, read_blob, settings_of, wait_state
from tests.web.browser import SHOWN_MS, expect, screenshots
from tests.web.conftest import TOKEN

pytestmark = pytest.mark.slow

SLEEP = "tests.worker.handlers:sleep"
MANIFEST = {"manifest": "sums.txt"}


def submit(env: dict[str, str], spec: dict) -> str:
    with api(env) as client:
        return str(client.post("/jobs", {"spec": spec})["id"])


def open_with_token(page, env: dict[str, str]) -> None:
    """Load the page as a user would: it asks for the token, the user types it in."""
    page.goto(settings_of(env).api.listen + "/")
    assert page.url.endswith("/ui/")
    form = page.locator("#token-form")
    expect(form).to_be_visible(timeout=SHOWN_MS)
    expect(page.locator("#token-note")).to_contain_text("Bearer <token>")
    expect(page.locator("#status")).to_have_text("needs a token")
    page.fill("#token", TOKEN)
    page.click("#token-form button[type=submit]")
    expect(form).to_be_hidden()
    expect(page.locator("#status")).to_contain_text("live", timeout=SHOWN_MS)


def test_a_job_is_followed_to_100_percent_and_its_results_downloaded(grid, page, tmp_path):
    open_with_token(page, grid)
    spec = {
        "name": "page-demo",
        "priority": "high",
        "stages": [
            # Two rounds of 2.5 s on the grid's two workers: the page sees 40 % for a while.
            {"name": "work", "handler": SLEEP, "parts": 4, "params": {"seconds": 2.5}},
            {"name": "sums", "handler": "checksum", "mode": "fan_in", "params": MANIFEST},
        ],
    }
    job_id = submit(grid, spec)
    row = page.locator(f'tr[data-job="{job_id}"]')
    expect(row.locator("a.name")).to_have_text("page-demo", timeout=SHOWN_MS)
    # Live: the row shows the job running part of the way before it shows it done.
    expect(row.locator(".pct")).to_have_text(re.compile(r"^[1-9][0-9]?%$"), timeout=SHOWN_MS)
    expect(row).to_have_attribute("data-state", "running")
    expect(row.locator(".pct")).to_have_text("100%", timeout=SHOWN_MS)
    expect(row.locator(".state")).to_have_text("succeeded")
    expect(row.locator("button.danger")).to_have_count(0)  # no cancel for a finished job
    assert wait_state(grid, job_id, ("succeeded",), timeout=1) == "succeeded"

    folder = screenshots(tmp_path)
    page.screenshot(path=folder / "jobs.png", full_page=True)
    row.locator("a.name").click()
    assert page.url.endswith(f"#/jobs/{job_id}")
    header = page.locator(f'section.job[data-job="{job_id}"]')
    expect(header.locator("#job-progress b")).to_have_text("100% · 5/5", timeout=SHOWN_MS)
    stages = page.locator("tr[data-stage]")
    expect(stages).to_have_count(2)
    expect(page.locator('tr[data-stage="work"] .state')).to_have_text("succeeded")
    expect(page.locator('tr[data-stage="work"] .pct')).to_have_text("100%")
    expect(page.locator('tr[data-stage="sums"] td').nth(1)).to_have_text("fan_in")
    tasks = page.locator("tr[data-task]")
    expect(tasks).to_have_count(5)
    expect(page.locator('tr[data-task][data-state="succeeded"]')).to_have_count(5)
    expect(page.locator(f'tr[data-task="{job_id}/work/0"] td').nth(3)).to_contain_text(" · w")

    # The result downloads through the page, which sends the token the link cannot carry.
    result = page.locator(f'tr[data-key="jobs/{job_id}/sums/0/sums.txt"]')
    expect(result.locator("td").first).to_have_text("sums/0/sums.txt")
    with page.expect_download() as downloading:
        result.locator("a.download").click()
    saved = tmp_path / "sums.txt"
    downloading.value.save_as(saved)
    assert downloading.value.suggested_filename == "sums.txt"
    assert saved.read_bytes() == read_blob(grid, f"jobs/{job_id}/sums/0/sums.txt")
    assert saved.read_text().count(f"jobs/{job_id}/work/") == 4

    shot = folder / "job.png"
    page.screenshot(path=shot, full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot of the job page: {shot}")

    page.click("nav a[data-tab=nodes]")
    node = page.locator("section.node").first
    expect(node).to_have_attribute("data-state", "up", timeout=SHOWN_MS)
    expect(node.locator("tr[data-worker]")).to_have_count(2)
    page.screenshot(path=folder / "nodes.png", full_page=True)


def test_a_running_job_is_cancelled_from_the_page_and_its_name_shown_as_text(grid, page):
    open_with_token(page, grid)
    name = '<b id="bold">not bold</b> & <script>co</script>'
    spec = {"name": name, "stages": [{"handler": SLEEP, "parts": 2, "params": {"seconds": 60}}]}
    job_id = submit(grid, spec)
    row = page.locator(f'tr[data-job="{job_id}"]')
    expect(row).to_have_attribute("data-state", "running", timeout=SHOWN_MS)
    expect(row.locator("a.name")).to_have_text(name)
    assert page.locator("#bold").count() == 0  # the name stayed text

    asked: list[str] = []

    def confirm(dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", confirm)
    row.locator("button.danger").click()
    expect(row).to_have_attribute("data-state", "cancelled", timeout=SHOWN_MS)
    assert asked == [f"Cancel job {job_id}? Its queued tasks will not run."]
    assert wait_state(grid, job_id, ("cancelled",), timeout=1) == "cancelled"
    with api(grid) as client:
        job = client.get(f"/jobs/{job_id}")
    assert job["reason"] == "cancelled through the API"
    expect(row.locator("button.danger")).to_have_count(0)
    expect(page.locator("#flash")).to_be_hidden()
