"""A parent process for the parent-death test, run as ``python children.py RUN_DIR``.

It spawns one actor, prints the actor's pid once the actor's mailbox exists, and waits to
be killed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from batchfarm.actors.runtime import mailbox_address, spawn
from tests.runtime.sample_actors import Sleeper


def main(run_dir: Path) -> None:
    address = mailbox_address(run_dir, "orphan")
    proc = spawn(Sleeper, address=address, name="orphan")
    sock = Path(address.removeprefix("ipc://"))
    deadline = time.monotonic() + 30
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    print(proc.pid, flush=True)
    time.sleep(120)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
