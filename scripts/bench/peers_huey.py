"""The Huey instance (SqliteHuey) the overhead benchmark runs: ``huey_consumer`` imports it.

``BENCH_HUEY_DB`` is the SQLite file. Results are stored, ``None`` too (``store_none``), so
each completion is recorded where the benchmark can count it. ``BENCH_HUEY_FSYNC`` is
``default`` (SQLite's own synchronous setting), ``on`` or ``off``.
"""

from __future__ import annotations

import os

from huey import SqliteHuey

_FSYNC = {"default": None, "on": True, "off": False}[os.environ.get("BENCH_HUEY_FSYNC", "default")]

huey = SqliteHuey(
    "bench",
    filename=os.environ.get("BENCH_HUEY_DB", "huey-bench.db"),
    store_none=True,
    fsync=_FSYNC,
)


@huey.task()
def noop() -> None:
    """Nothing: the system's own per-task cost."""
