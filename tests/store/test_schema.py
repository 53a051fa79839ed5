"""The schema: built by Alembic, reversible, and equal to the models on every database."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from batchfarm.actors.backends.store import NewJob, NewStage, NewTask, Store, migrate
from batchfarm.actors.backends.store.models import Base
from batchfarm.actors.errors import StoreError

STORE_TABLES = {table.name for table in Base.metadata.sorted_tables}


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_the_models_name_the_eight_tables() -> None:
    assert {
        "jobs",
        "stages",
        "tasks",
        "nodes",
        "workers",
        "metric_samples",
        "scaling_events",
        "unpriced_runs",
    } == STORE_TABLES


def test_opening_an_empty_database_creates_the_schema_through_alembic(
    empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_create_all(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the schema must come from the migrations, not create_all")

    monkeypatch.setattr(sa.MetaData, "create_all", no_create_all)
    assert table_names(empty_url) == set()
    assert migrate.current_revision(empty_url) is None

    with Store(empty_url) as store:
        assert migrate.current_revision(store.engine) == migrate.head_revision()
        store.create_job(NewJob("j", [NewStage("s", 0, "checksum")]), [NewTask("s", 0)])
        assert store.stage_counts("j")[0].counts == {"pending": 1}

    assert table_names(empty_url) == STORE_TABLES | {migrate.VERSION_TABLE}
    assert migrate.head_revision() == "0005"


def test_upgrade_downgrade_to_base_and_upgrade_again(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    assert migrate.current_revision(empty_url) == migrate.head_revision()
    assert migrate.schema_differences(empty_url) == []

    migrate.downgrade(empty_url, "base")
    assert migrate.current_revision(empty_url) is None
    assert table_names(empty_url) & STORE_TABLES == set()
    # The comparison sees a missing schema, so an empty comparison means something.
    differences = migrate.schema_differences(empty_url)
    assert {diff[0] for diff in differences} == {"add_table", "add_index"}
    assert {diff[1].name for diff in differences if diff[0] == "add_table"} == STORE_TABLES

    migrate.upgrade(empty_url)
    assert migrate.current_revision(empty_url) == migrate.head_revision()
    assert migrate.schema_differences(empty_url) == []


def test_models_match_the_migrated_schema(shared_url: str) -> None:
    assert migrate.schema_differences(shared_url) == []


def test_reopening_a_store_at_head_keeps_its_data(empty_url: str) -> None:
    with Store(empty_url) as store:
        store.create_job(NewJob("kept", [NewStage("s", 0, "probe")]))
    with Store(empty_url) as store:
        job = store.job("kept")
        assert job is not None
        assert job.id == "kept"
    assert migrate.current_revision(empty_url) == migrate.head_revision()


def test_stores_opened_at_once_on_an_empty_database_create_the_schema_once(
    empty_url: str,
) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def open_store() -> None:
        try:
            start.wait()
            Store(empty_url).close()
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=open_store) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert migrate.current_revision(empty_url) == migrate.head_revision()
    assert migrate.schema_differences(empty_url) == []


def test_a_database_newer_than_the_code_is_a_store_error(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    engine = sa.create_engine(empty_url)
    try:
        with engine.begin() as connection:
            version = sa.table(migrate.VERSION_TABLE, sa.column("version_num"))
            connection.execute(version.update().values(version_num="9999"))
    finally:
        engine.dispose()
    with pytest.raises(StoreError, match=r"upgrade schema to head failed .*9999"):
        Store(empty_url)


def test_make_revision_writes_the_next_numbered_migration(tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, directory, ignore=shutil.ignore_patterns("__pycache__"))
    path = migrate.make_revision("nothing changed", directory=directory)
    assert path.name == "0006_nothing_changed.py"
    text = path.read_text()
    assert "down_revision: str | None = '0005'" in text
    # The models equal the migrations, so autogenerate finds nothing to do.
    assert "op." not in text


def test_an_in_memory_sqlite_store_works_within_its_thread() -> None:
    with Store("sqlite://") as store:
        assert migrate.current_revision(store.engine) == migrate.head_revision()
        store.create_job(NewJob("j", [NewStage("s", 0, "probe")]), [NewTask("s", 0)])
        assert store.stage_counts("j")[0].counts == {"pending": 1}


JSON_COLUMNS = ("spec", "params", "inputs", "outputs")


def _columns(url: str, table: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return {column["name"] for column in sa.inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_0002_and_0003_add_columns_to_existing_tasks_and_can_be_undone(empty_url: str) -> None:
    migrate.upgrade(empty_url, "0001")
    assert "failed_nodes" not in _columns(empty_url, "tasks")
    # A task written at 0001 (by SQL: the store's own writes know the new column).
    rows = {
        "jobs": {"id": "old", "name": "", "state": "running", "priority": 0, "spec": {}},
        "stages": {"job_id": "old", "name": "s", "index": 0, "handler": "noop", "params": {}},
        "tasks": {"job_id": "old", "stage": "s", "part": 0, "state": "failed", "inputs": []},
    }
    rows["jobs"].update(created_at=1.0, updated_at=1.0)
    rows["stages"].update(node_class="default", mode="chain", state="failed")
    rows["tasks"].update(outputs=[], attempts=1, duplicate_runs=0, updated_at=1.0)
    rows["tasks"].update({f"{n}_s": 0.0 for n in ("queue_wait", "fetch", "compute", "upload")})
    rows["tasks"].update(cpu_s=0.0, bytes_in=0, bytes_out=0)
    engine = sa.create_engine(empty_url)
    try:
        with engine.begin() as connection:
            for name, row in rows.items():
                # JSON typed by hand: MariaDB reflects a JSON column as LONGTEXT.
                columns = [sa.column(k, sa.JSON() if k in JSON_COLUMNS else None) for k in row]
                connection.execute(sa.insert(sa.table(name, *columns)), row)
    finally:
        engine.dispose()

    migrate.upgrade(empty_url)
    with Store(empty_url) as store:
        old = store.task("old", "s", 0)
        assert old is not None
        assert (old.state, old.failed_nodes, old.result) == ("failed", None, None)
        store.add_tasks("old", [NewTask("s", 1)])
        new = store.task("old", "s", 1)
        assert new is not None
        assert new.failed_nodes == []
    migrate.downgrade(empty_url, "0002")
    assert "result" not in _columns(empty_url, "tasks")
    assert "failed_nodes" in _columns(empty_url, "tasks")
    migrate.downgrade(empty_url, "0001")
    assert "failed_nodes" not in _columns(empty_url, "tasks")
    migrate.upgrade(empty_url)
    assert migrate.schema_differences(empty_url) == []
    with Store(empty_url) as store:
        assert [t.part for t in store.tasks("old")] == [0, 1]
