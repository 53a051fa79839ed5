"""One grid (``batchfarm up``) per test module: starting one takes a few seconds."""

from __future__ import annotations

import pytest

from tests.cli.grid import running_grid

TOKEN = "cli-test-token"


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The environment of a running grid (``batchfarm up --workers 2``) for ``cli(env, ...)``."""
    # With a token: every verb must send it (the tests' CLI runs get it from the environment).
    with running_grid(tmp_path_factory.mktemp("grid"), TOKEN) as env:
        yield env
