"""The embedded store's SQLite settings: what a committed write survives."""

from __future__ import annotations

from pathlib import Path

from batchfarm.actors.backends.store.engine import make_engine


def test_a_file_store_logs_ahead_and_fsyncs_every_commit(tmp_path: Path) -> None:
    # The manager deletes completion events from the queue (another file) once their runs
    # are committed here: a commit must outlive a power loss, not only a crashed process.
    engine = make_engine(f"sqlite:///{tmp_path / 'grid.db'}")
    try:
        with engine.connect() as connection:
            journal = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
            synchronous = connection.exec_driver_sql("PRAGMA synchronous").scalar()
    finally:
        engine.dispose()
    assert journal == "wal"
    assert synchronous == 2  # FULL (NORMAL is 1)
