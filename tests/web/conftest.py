"""The page's fixtures: a grid (``batchfarm up``, with a token) and a headless Chromium."""

from __future__ import annotations

import pytest

from tests.cli.grid import running_grid
from tests.web.browser import FLAGS, chromium, missing

TOKEN = "web-test-token"


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The environment of a running grid (``batchfarm up --workers 2``) whose API has a token."""
    with running_grid(tmp_path_factory.mktemp("grid"), TOKEN) as env:
        yield env


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for the module."""
    executable = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("no Playwright for the web page's test: pip install playwright (test extras)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh tab (its own sessionStorage, so no token yet) that fails on a script error."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on(
        "console",
        lambda message: errors.append(message.text) if "Content Security" in message.text else None,
    )
    yield tab
    context.close()
    assert not errors, f"the page raised: {errors}"
