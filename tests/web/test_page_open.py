"""The page on a loopback grid with no token: nothing to type, failures and unknown jobs shown."""

from __future__ import annotations

import pytest

from tests.api.apigrid import noop_spec, start_api
from tests.web.browser import SHOWN_MS, expect

pytestmark = pytest.mark.slow


@pytest.fixture
def grid(tmp_path):
    started = start_api(tmp_path / "state")
    yield started
    started.close()


def test_a_failed_job_shows_its_error_with_no_token_asked_for(grid, page):
    job_id = grid.client.post("/api/v1/jobs", json={"spec": noop_spec(3)}).json()["id"]
    grid.run_tasks(fail=(f"{job_id}/noop/1",))

    page.goto(f"{grid.server.url}/ui/#/jobs/{job_id}")
    header = page.locator(f'section.job[data-job="{job_id}"]')
    expect(header).to_have_attribute("data-state", "failed", timeout=SHOWN_MS)
    expect(page.locator("#token-form")).to_be_hidden()
    expect(page.locator("#status")).to_contain_text("live")
    expect(header.locator("p.why")).to_contain_text(f"task {job_id}/noop/1 failed")
    expect(page.locator(".failures li")).to_have_text(
        f"{job_id}/noop/1 TaskError: bad input: not a clip"
    )

    # The tasks' filter: only the failed one, with its error.
    page.click(".filters a:text-is('failed 1')")
    expect(page.locator("tr[data-task]")).to_have_count(1, timeout=SHOWN_MS)
    failed = page.locator(f'tr[data-task="{job_id}/noop/1"]')
    expect(failed.locator("td.error")).to_have_text("TaskError: bad input: not a clip")
    expect(page.locator("tr[data-key]")).to_have_count(2)  # the two parts that succeeded

    page.goto(f"{grid.server.url}/ui/#/jobs/no-such-job")
    expect(page.locator("main .empty")).to_contain_text("no job 'no-such-job'", timeout=SHOWN_MS)
