"""Exit codes and what they are called."""

from __future__ import annotations

import signal

import pytest

from batchfarm.actors.runtime import ExitCode, describe_exit


def test_exit_codes_are_fixed():
    # Supervisors, scripts and systemd units rely on these numbers.
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0,
        "FAILED": 1,
        "USAGE": 2,
        "HUNG": 3,
        "ORPHANED": 4,
        "CONFIG": 78,
    }


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (None, "still running"),
        (0, "ok"),
        (ExitCode.FAILED, "failed"),
        (2, "bad command line"),
        (3, "hung (a task would not stop)"),
        (4, "orphaned (its parent died)"),
        (78, "bad configuration"),
        (42, "exit status 42"),
        (-signal.SIGKILL, "killed by SIGKILL"),
        (-signal.SIGTERM, "killed by SIGTERM"),
        (-99, "killed by signal 99"),
    ],
)
def test_describe_exit(code, words):
    assert describe_exit(code) == words
