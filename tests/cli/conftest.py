"""One grid (``batchfarm up``) per test module: starting one takes a few seconds."""

from __future__ import annotations

import pytest

from tests.cli.grid import UpProcess, grid_env

TOKEN = "cli-test-token"


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The environment of a running grid (``batchfarm up --workers 2``) for ``cli(env, ...)``."""
    folder = tmp_path_factory.mktemp("grid")
    # With a token: every verb must send it (the tests' CLI runs get it from the environment).
    env = {**grid_env(folder / "state"), "BATCHFARM_API_TOKEN": TOKEN}
    up = UpProcess(folder, env, "--workers", "2")
    try:
        up.wait_ready()
        yield env
    finally:
        up.close()
