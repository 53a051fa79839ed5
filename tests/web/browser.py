"""Headless Chromium for the page's tests, driven by Playwright over the DevTools protocol.

Playwright (PyPI) drives the system's Chromium (Debian's ``chromium`` package) through
``executable_path``, so no browser is downloaded. Under CI a missing Chromium or Playwright
fails the test with how to install it; elsewhere the test is skipped with the same words.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

#: Milliseconds the page gets to show what the API says (it polls every 1.5 s).
SHOWN_MS = 30_000
#: Where Chromium is looked for, after ``$BATCHFARM_CHROMIUM``.
CHROMIUM = ("chromium", "/usr/bin/chromium", "chromium-browser")
#: Flags for a quiet headless run in a container (Playwright adds ``--headless`` and a
#: fresh ``--user-data-dir`` of its own).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing(what: str) -> None:
    """Fail, saying what is missing: a test that cannot run must not pass."""
    pytest.fail(what, pytrace=False)


def chromium() -> str:
    """The Chromium executable to drive."""
    wanted = os.environ.get("BATCHFARM_CHROMIUM")
    for name in (wanted,) if wanted else CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    missing(
        f"no Chromium ({wanted or ', '.join(CHROMIUM)}) for the web page's test: install"
        " Debian's package with `apt-get install -y chromium` (scripts/test does, as root),"
        " or name the executable in BATCHFARM_CHROMIUM"
    )
    raise AssertionError("unreachable")


def expect(locator: Any) -> Any:
    """Playwright's ``expect`` (imported when used: the module may be missing outside CI)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def screenshots(tmp_path: Path) -> Path:
    """Where screenshots go: ``$BATCHFARM_SCREENSHOTS``, or the test's tmp folder."""
    folder = Path(os.environ.get("BATCHFARM_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
