"""The API tests' fixture: a real server over an embedded grid in the test's tmp folder."""

from __future__ import annotations

import pytest

from tests.api.apigrid import start_api


@pytest.fixture
def grid(tmp_path):
    started = start_api(tmp_path / "state")
    yield started
    started.close()
