"""run_tool: exit codes and tails, no stdin, cancellation and death take the whole group."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from batchfarm.actors.errors import TaskCancelled, TaskError
from batchfarm.actors.handlers.tool import TAIL_CHARS, TAIL_LINES, Tail, run

HERE = Path(__file__).parent


def never() -> bool:
    return False


def gone(pid: int) -> bool:
    """True when the process no longer runs (a zombie waiting for its reaper counts)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.01)
    return gone(pid)


def test_success_returns_both_tails(tmp_path):
    result = run(["sh", "-c", "echo one; echo two; echo oops >&2"], cancelled=never, cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout_tail == "one\ntwo"
    assert result.stderr_tail == "oops"
    assert 0 < result.elapsed_s < 5


def test_runs_in_cwd_with_no_stdin(tmp_path):
    # `cat` would wait for ever on an inherited stdin; on /dev/null it ends at once.
    result = run(["sh", "-c", "pwd; cat"], cancelled=never, cwd=tmp_path)
    assert result.stdout_tail == str(tmp_path)


def test_nonzero_exit_names_the_tool_code_and_last_stderr_line():
    script = "echo progress; echo 'first problem' >&2; echo 'last problem' >&2; echo >&2; exit 3"
    with pytest.raises(TaskError) as caught:
        run(["sh", "-c", script], cancelled=never)
    error = caught.value
    assert str(error) == "sh exited with code 3: last problem"
    assert error.stderr_tail.splitlines()[:2] == ["first problem", "last problem"]
    assert error.permanent is False


def test_permanent_if_classifies_the_stderr_tail():
    argv = ["sh", "-c", "echo 'moov atom not found' >&2; exit 1"]
    with pytest.raises(TaskError) as caught:
        run(argv, cancelled=never, permanent_if=lambda tail: "moov atom" in tail)
    assert caught.value.permanent is True
    with pytest.raises(TaskError) as caught:
        run(argv, cancelled=never, permanent_if=lambda tail: "disk full" in tail)
    assert caught.value.permanent is False


def test_a_silent_failure_still_says_its_code():
    with pytest.raises(TaskError, match=r"^false exited with code 1$"):
        run(["false"], cancelled=never)


def test_tails_keep_the_last_lines_and_at_most_4_kib():
    code = "import sys\nfor i in range(500): print(f'line {i}', file=sys.stderr)\nsys.exit(2)"
    with pytest.raises(TaskError) as caught:
        run([sys.executable, "-c", code], cancelled=never)
    lines = caught.value.stderr_tail.splitlines()
    assert lines == [f"line {i}" for i in range(500 - TAIL_LINES, 500)]

    code = "for i in range(100): print(str(i) * 1000)"
    result = run([sys.executable, "-c", code], cancelled=never)
    assert len(result.stdout_tail) == TAIL_CHARS
    assert result.stdout_tail.endswith("99" * 500)


def test_every_stdout_line_reaches_the_callback_in_order():
    # Writes in odd-sized pieces, so lines are split across reads.
    code = (
        "import sys, time\n"
        "data = ''.join(f'key{i}=value{i}\\n' for i in range(2000))\n"
        "for at in range(0, len(data), 777):\n"
        "    sys.stdout.write(data[at:at + 777]); sys.stdout.flush()\n"
        "sys.stdout.write('no newline at the end')\n"
    )
    lines: list[str] = []
    run([sys.executable, "-c", code], cancelled=never, on_stdout_line=lines.append)
    assert lines == [f"key{i}=value{i}" for i in range(2000)] + ["no newline at the end"]


def test_tail_cuts_endless_lines_and_decodes_bad_bytes():
    seen: list[str] = []
    tail = Tail(seen.append)
    tail.feed(b"x" * 200_000)
    tail.feed(b"tail\n")
    assert [len(line) for line in seen] == [65536, 65536, 65536, 200_000 - 3 * 65536 + 4]
    tail.feed(b"\xff\xfeok\r\n")
    tail.close()
    assert seen[-1] == "\ufffd\ufffdok"
    assert tail.last_line() == "\ufffd\ufffdok"


def test_missing_program_is_permanent_and_named(tmp_path):
    missing = tmp_path / "no-such-tool"
    with pytest.raises(TaskError, match="no-such-tool") as caught:
        run([str(missing), "-x"], cancelled=never)
    assert caught.value.permanent is True
    assert str(missing) in str(caught.value)


def test_missing_folder_to_run_in_is_not_a_missing_program(tmp_path):
    with pytest.raises(TaskError, match=r"true: cannot run in .*/gone: no such folder") as caught:
        run(["true"], cancelled=never, cwd=tmp_path / "gone")
    assert caught.value.permanent is False


def test_non_executable_program_is_permanent(tmp_path):
    script = tmp_path / "tool"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(TaskError, match="not executable") as caught:
        run([str(script)], cancelled=never)
    assert caught.value.permanent is True


def test_empty_argv_is_refused():
    with pytest.raises(TaskError, match="argv is empty"):
        run([], cancelled=never)


def test_cancel_kills_the_whole_process_group_quickly():
    pids: list[int] = []
    cancel = threading.Event()

    def on_line(line: str) -> None:
        pids.append(int(line))
        if len(pids) == 2:
            cancel.set()

    # A grandchild in the background and the shell itself, both long sleepers.
    argv = ["sh", "-c", "sleep 100 & echo $!; echo $$; sleep 100"]
    started = time.monotonic()
    with pytest.raises(TaskCancelled) as caught:
        run(argv, cancelled=cancel.is_set, on_stdout_line=on_line)
    assert time.monotonic() - started < 2
    assert caught.value.reason == "cancelled"
    grandchild, shell = pids
    assert gone(shell)
    assert wait_gone(grandchild, 1.0)


def test_a_tool_that_exits_leaves_no_stray_behind():
    # The stray holds the pipes open; the run must neither wait for it nor leave it running.
    lines: list[str] = []
    started = time.monotonic()
    result = run(["sh", "-c", "sleep 100 & echo $!"], cancelled=never, on_stdout_line=lines.append)
    assert result.returncode == 0
    assert time.monotonic() - started < 3
    assert wait_gone(int(lines[0]), 1.0)


def test_an_error_in_the_callback_kills_the_tool():
    pids: list[int] = []

    def on_line(line: str) -> None:
        pids.append(int(line))
        raise ValueError("handler bug")

    with pytest.raises(ValueError, match="handler bug"):
        run(["sh", "-c", "echo $$; exec sleep 100"], cancelled=never, on_stdout_line=on_line)
    assert gone(pids[0])


def test_the_tool_dies_with_the_process_that_started_it():
    with subprocess.Popen(
        [sys.executable, str(HERE / "tool_child.py")], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            tool_pid = int(child.stdout.readline())
            # The shell printed its pid just before it became sleep.
            deadline = time.monotonic() + 2
            while psutil.Process(tool_pid).name() != "sleep" and time.monotonic() < deadline:
                time.sleep(0.01)
            assert psutil.Process(tool_pid).name() == "sleep"
            os.kill(child.pid, 9)
            child.wait(5)
            assert wait_gone(tool_pid, 1.0)
        finally:
            child.kill()
