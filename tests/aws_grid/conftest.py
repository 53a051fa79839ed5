"""Fixtures of the AWS end-to-end tests: a fresh PostgreSQL database per test, and the grid.

The database server is the store suite's (127.0.0.1:5432, or ``BATCHFARM_TEST_POSTGRESQL_URL``);
a server that cannot be reached fails the test naming it, as in the store suite.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.aws import MotoServer
from tests.aws_grid.awsgrid import AwsGrid
from tests.store.conftest import SERVER_URLS, Server


@pytest.fixture(scope="session")
def postgresql() -> Iterator[Server]:
    """The PostgreSQL server, on which each test gets a database of its own."""
    server = Server("postgresql", SERVER_URLS["postgresql"])
    server.connect()
    yield server
    server.drop_all()


@pytest.fixture
def aws_grid(tmp_path, moto: MotoServer, postgresql: Server) -> Iterator[AwsGrid]:
    """A grid on moto (a fresh bucket and queue prefix) and a fresh PostgreSQL database."""
    grid = AwsGrid(tmp_path, moto, postgresql.create_database())
    try:
        yield grid
    finally:
        grid.close()
