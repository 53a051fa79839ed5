"""Failures surface as StoreError, naming the operation and never the password."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.engine import make_url

from batchfarm.actors.backends.store import NewJob, NewStage, NewTask, Store
from batchfarm.actors.errors import BackendError, StoreError

PASSWORD = "S3cr3t-pässword"

# Nothing listens on port 1: the connection is refused at once.
UNREACHABLE = {
    "postgresql": f"postgresql+psycopg://root:{PASSWORD}@127.0.0.1:1/test",
    "mysql": f"mysql+pymysql://root:{PASSWORD}@127.0.0.1:1/test",
}


@pytest.mark.parametrize("backend", sorted(UNREACHABLE))
def test_an_unreachable_server_is_a_store_error_without_the_password(backend: str) -> None:
    with pytest.raises(StoreError) as caught:
        Store(UNREACHABLE[backend])
    message = str(caught.value)
    assert "upgrade schema to head failed on" in message
    assert "127.0.0.1:1" in message
    assert "***" in message
    assert PASSWORD not in message
    assert isinstance(caught.value, BackendError)


def test_an_unopenable_sqlite_file_is_a_store_error() -> None:
    with pytest.raises(StoreError, match=r"failed on sqlite:////no-such-dir/.*unable to open"):
        Store("sqlite:////no-such-dir/for/batchfarm/grid.db")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", r"bad store URL"),
        (
            "oracle+nosuchdriver://user:pw@host/db",
            r"open store oracle\+nosuchdriver://user:\*\*\*@",
        ),
    ],
)
def test_bad_urls_are_store_errors(url: str, expected: str) -> None:
    with pytest.raises(StoreError, match=expected) as caught:
        Store(url)
    assert ":pw@" not in str(caught.value)


def test_the_batch_size_must_be_positive() -> None:
    with pytest.raises(StoreError, match="batch_size must be at least 1"):
        Store("sqlite:///unused.db", batch_size=0)


def test_database_errors_name_the_operation_and_hide_the_password(
    backend: str, shared_url: str, open_store: Callable[..., Store]
) -> None:
    # PostgreSQL here trusts local users whatever their password, so the store opens and the
    # error comes from a write; MariaDB's root has no password, so the error is the login.
    url = make_url(shared_url)
    if backend != "sqlite":
        url = url.set(password=PASSWORD)

    def open_and_write() -> None:
        with Store(url.render_as_string(hide_password=False), upgrade=backend != "mysql") as s:
            s.create_job(NewJob("j", [NewStage("s", 0, "probe")]))
            s.add_tasks("j", [NewTask("missing-stage", 0)])

    with pytest.raises(StoreError) as caught:
        open_and_write()
    message = str(caught.value)
    assert PASSWORD not in message
    if backend == "mysql":
        assert message.startswith("create job 'j' failed on mysql+pymysql://root:***@")
        assert "Access denied" in message
    else:
        # The foreign key from tasks to stages holds (SQLite's too: foreign keys are on).
        assert message.startswith("add tasks to job 'j' failed on ")
        assert "IntegrityError" in message
    if backend == "postgresql":
        assert ":***@" in message


@pytest.mark.parametrize(
    ("job_id", "stage"),
    [("", "s"), ("a/b", "s"), ("x" * 65, "s"), ("ok", "bad/stage"), ("ok", "")],
)
def test_ids_that_cannot_be_task_id_parts_are_refused(
    store: Store, job_id: str, stage: str
) -> None:
    with pytest.raises(StoreError, match="must be 1 to 64 characters without '/'"):
        store.create_job(NewJob(job_id, [NewStage(stage, 0, "probe")]))


def test_a_missing_server_fails_the_test_and_says_how_to_point_at_another(
    server_guard: Callable[[str, str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    for ci in ("true", ""):  # in CI and outside it alike: a missing database never skips
        monkeypatch.setenv("CI", ci)
        with pytest.raises(
            pytest.fail.Exception,
            match=r"postgresql server not reachable: refused .*BATCHFARM_TEST_POSTGRESQL_URL",
        ):
            server_guard("postgresql", "refused")
