"""The RQ job function the overhead benchmark enqueues: RQ workers import it by name."""

from __future__ import annotations


def noop() -> None:
    """Nothing: the system's own per-task cost."""
