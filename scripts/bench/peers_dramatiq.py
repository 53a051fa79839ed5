"""The Dramatiq broker and actor the overhead benchmark runs: workers import this module.

Redis broker and Redis results backend (``BENCH_REDIS_URL``); the ``noop`` actor stores its
result, so each completion is recorded where the benchmark can count it.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")

backend = RedisBackend(url=REDIS_URL)
broker = RedisBroker(url=REDIS_URL)
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, max_retries=0)
def noop() -> None:
    """Nothing: the system's own per-task cost."""
