"""``batchfarm manager`` (and its nodes) as real processes over one embedded grid in tmp."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from batchfarm.actors.settings import Settings
from tests.node.nodeproc import BASE_ENV, NodeProcess, env_for
from tests.ports import free_port
from tests.worker.grid import make_settings


class ManagerProcess:
    """A ``batchfarm manager`` process; killed at the end of the test."""

    def __init__(self, state: Path, env: dict[str, str], log_name: str = "manager") -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFARM_")}
        environ.update(BASE_ENV)
        environ.update(env)
        environ["BATCHFARM_GRID_STATE_DIR"] = str(state)
        state.mkdir(parents=True, exist_ok=True)
        self.log = state.parent / f"{log_name}.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batchfarm.actors.cli", "manager"],
            env=environ,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()


class ManagerGrid:
    """Processes of one grid: a manager (telemetry and API on free ports) and its nodes.

    ``settings`` are the grid's settings as a test process sees them (the same state folder,
    telemetry endpoint and API address as the processes'); :meth:`close` kills them all.
    ``more`` are settings every process of the grid gets, as ``section_key=value`` keywords
    (``queue_url="sqs://grid"``, ``store_url=...``); ``settings`` has them too.
    """

    def __init__(self, tmp_path: Path, **more: object) -> None:
        self.state = tmp_path / "state"
        manager = f"tcp://127.0.0.1:{free_port()}"
        self.api_url = f"http://127.0.0.1:{free_port()}"
        self.env = env_for(
            node_manager=manager, node_heartbeat_interval=0.3, api_listen=self.api_url, **more
        )
        sections: dict[str, dict[str, object]] = {
            "node": {"manager": manager},
            "api": {"listen": self.api_url},
        }
        for name, value in more.items():
            section, _, key = name.partition("_")  # section names hold no "_"
            sections.setdefault(section, {})[key] = value
        self.settings: Settings = make_settings(self.state, **sections)
        self.started: list[ManagerProcess | NodeProcess] = []

    @property
    def environment(self) -> dict[str, str]:
        """The BATCHFARM_* variables the grid's processes run with (for ``batchfarm`` CLI runs)."""
        return {**BASE_ENV, **self.env, "BATCHFARM_GRID_STATE_DIR": str(self.state)}

    def manager(self, log_name: str = "manager", **more: object) -> ManagerProcess:
        """Start a manager; ``more`` are further settings as ``section_key=value``."""
        process = ManagerProcess(self.state, {**self.env, **env_for(**more)}, log_name)
        self.started.append(process)
        return process

    def node(self, name: str = "node-g", **more: object) -> NodeProcess:
        """Start a node called ``name``; ``more`` are further settings."""
        process = NodeProcess(self.state, name, env={**self.env, **env_for(**more)})
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in self.started:
            process.close()
