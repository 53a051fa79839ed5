"""Fixtures for the analytics-store contract suite: the same tests on SQLite, PostgreSQL, MariaDB.

PostgreSQL and MariaDB run on this machine (127.0.0.1:5432 and :3306, user root, no
password; override with ``BATCHFARM_TEST_POSTGRESQL_URL`` / ``BATCHFARM_TEST_MYSQL_URL``).
Each test session creates its own uniquely named databases on them and drops them at the
end, so parallel sessions and leftovers never meet. The contract tests share one migrated
database per backend and empty its tables before each test; the migration tests get
empty databases of their own.

A server that cannot be reached fails the tests that need it, saying which server and how to
point the suite at another: the store's contract holds only if it runs on all three.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url

from batchfarm.actors.backends.store import Store, migrate
from batchfarm.actors.backends.store.models import Base

BACKENDS = ["sqlite", "postgresql", "mysql"]
SERVER_URLS = {
    "postgresql": os.environ.get(
        "BATCHFARM_TEST_POSTGRESQL_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get(
        "BATCHFARM_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"
    ),
}


def unreachable(backend: str, reason: str) -> None:
    """Fail a test whose database server is missing, naming the server and the way out."""
    variable = f"BATCHFARM_TEST_{backend.upper()}_URL"
    pytest.fail(
        f"{backend} server not reachable: {reason} (the store suite runs on every database; "
        f"start the server or point {variable} at one)"
    )


class Server:
    """A PostgreSQL or MariaDB server on which the session creates its own databases."""

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        self.url = make_url(url)
        self._prefix = f"bf_store_{os.getpid()}_{secrets.token_hex(3)}"
        self._numbers = itertools.count()
        self._created: list[str] = []
        self._engine: Engine | None = None
        self.error: str | None = None

    def connect(self) -> None:
        """Check the server answers; remember why not if it does not."""
        engine = sa.create_engine(
            self.url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
        )
        try:
            with engine.connect() as connection:
                connection.execute(sa.select(1))
        except sa.exc.SQLAlchemyError as error:
            engine.dispose()
            self.error = str(error).splitlines()[0]
            return
        self._engine = engine

    def create_database(self) -> str:
        """A new empty database on the server; returns its URL."""
        if self._engine is None:
            unreachable(self.backend, self.error or "not connected")
            raise AssertionError("unreachable")  # pytest.fail raises; for type checkers
        name = f"{self._prefix}_{next(self._numbers)}"
        with self._engine.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
        self._created.append(name)
        return self.url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        """Drop every database this session created, then let go of the server."""
        if self._engine is None:
            return
        with self._engine.connect() as connection:
            for name in self._created:
                force = " WITH (FORCE)" if self.backend == "postgresql" else ""
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        self._engine.dispose()


@pytest.fixture(scope="session")
def servers() -> Iterator[dict[str, Server]]:
    """The database servers, connected once per session (or marked unreachable)."""
    found = {backend: Server(backend, url) for backend, url in SERVER_URLS.items()}
    for server in found.values():
        server.connect()
    yield found
    for server in found.values():
        server.drop_all()


@pytest.fixture(scope="session")
def new_database(
    servers: dict[str, Server], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], str]:
    """Factory: a URL to a new empty database of a backend."""
    numbers = itertools.count()

    def make(backend: str) -> str:
        if backend == "sqlite":
            path = tmp_path_factory.mktemp("store") / f"grid{next(numbers)}.db"
            return f"sqlite:///{path}"
        return servers[backend].create_database()

    return make


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend of the contract suite in turn."""
    return str(request.param)


@pytest.fixture(scope="session")
def shared_url(backend: str, new_database: Callable[[str], str]) -> str:
    """One database per backend for the session, migrated to head once."""
    url = new_database(backend)
    migrate.upgrade(url)
    return url


@pytest.fixture
def empty_url(backend: str, new_database: Callable[[str], str]) -> str:
    """A new empty database of the backend, for tests that migrate it themselves."""
    return new_database(backend)


class StoreFactory:
    """Opens stores on the shared database and closes them at the end of the test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._opened: list[Store] = []

    def __call__(self, batch_size: int = 500) -> Store:
        store = Store(self.url, batch_size=batch_size, upgrade=False)
        self._opened.append(store)
        return store

    def close(self) -> None:
        for store in self._opened:
            store.close()


@pytest.fixture
def open_store(shared_url: str) -> Iterator[StoreFactory]:
    """Factory of stores on the backend's shared database, emptied before the test."""
    engine = sa.create_engine(shared_url)
    try:
        with engine.begin() as connection:
            clear_tables(connection)
    finally:
        engine.dispose()
    factory = StoreFactory(shared_url)
    yield factory
    factory.close()


@pytest.fixture
def store(open_store: StoreFactory) -> Store:
    """A store on the backend's shared database, emptied, with the default batch size."""
    return open_store()


def clear_tables(connection: Connection) -> None:
    """Delete every row of the store's tables, children first."""
    for table in reversed(Base.metadata.sorted_tables):
        connection.execute(table.delete())


@pytest.fixture
def commits() -> Callable[[Engine], contextlib.AbstractContextManager[list[int]]]:
    """``with commits(store.engine) as n:`` counts the transactions committed (in ``n[0]``)."""
    return count_commits


@pytest.fixture
def server_guard() -> Callable[[str, str], None]:
    """The check that fails a test whose server is missing."""
    return unreachable


@contextlib.contextmanager
def count_commits(engine: Engine) -> Iterator[list[int]]:
    """Count the transactions committed on ``engine`` inside the block (in ``[0]``)."""
    counter = [0]

    def on_commit(_connection: Connection) -> None:
        counter[0] += 1

    event.listen(engine, "commit", on_commit)
    try:
        yield counter
    finally:
        event.remove(engine, "commit", on_commit)
