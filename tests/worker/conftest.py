"""Fixtures of the worker tests."""

from __future__ import annotations

import threading

import pytest

from batchfarm.actors.worker.core import WorkerCore
from tests.worker.grid import Ticker


@pytest.fixture
def start_core(tmp_path):
    """Start a WorkerCore with the loop's timers played by a Ticker; closed at the end."""
    started = []

    def start(settings, index=0):
        drained = threading.Event()
        core = WorkerCore(
            settings,
            index,
            "node-t",
            threads=1,
            scratch_root=tmp_path / f"scratch-{index}",
            on_drained=drained.set,
        )
        core.drained = drained
        core.start()
        ticker = Ticker()
        ticker.every(core.leases.interval_s, core.renew_leases)
        ticker.every(0.05, core.enforce_limits)
        ticker.every(0.2, core.check_cancelled)
        started.append((core, ticker))
        return core

    yield start
    for core, ticker in started:
        ticker.close()
        core.close()
