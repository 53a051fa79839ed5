"""Run as ``python tool_child.py``: start ``sleep`` through run_tool from a thread, as a worker
does, print the tool's pid, and wait to be killed."""

from __future__ import annotations

import sys
import threading
import time

from batchfarm.actors.handlers.tool import run


def on_line(line: str) -> None:
    print(line, flush=True)


def main() -> None:
    # The shell prints its pid, then becomes sleep: the printed pid is the tool's.
    argv = ["sh", "-c", "echo $$; exec sleep 100"]
    thread = threading.Thread(
        target=run, args=(argv,), kwargs={"cancelled": lambda: False, "on_stdout_line": on_line}
    )
    thread.start()
    time.sleep(100)
    sys.exit(1)


if __name__ == "__main__":
    main()
