"""A real Prometheus server for the monitoring tests (Debian's ``prometheus`` package).

:func:`tool` finds ``prometheus`` or ``promtool``: under ``CI=true`` a missing one fails the
test, saying how to install it; elsewhere the test is skipped with the same words.
:class:`Prometheus` runs the server on a free port, with its own data folder and a scrape
config for the targets given, and queries it over its HTTP API.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ports import free_port

INSTALL = "install it with: apt-get install prometheus (Debian/Ubuntu; it brings promtool)"


def tool(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``; without it the test fails, saying how."""
    debian = Path("/usr/bin") / name
    found = shutil.which(name) or (str(debian) if debian.exists() else None)
    if found is None:
        pytest.fail(f"{name} is not on this machine: {INSTALL}")
    return found


def scrape_config(targets: dict[str, str], interval_s: float = 1.0) -> str:
    """A Prometheus config scraping each ``job name -> host:port`` every ``interval_s``."""
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        for job, target in targets.items()
    )
    return (
        f"global:\n  scrape_interval: {interval_s:g}s\n  evaluation_interval: {interval_s:g}s\n"
        f"scrape_configs:\n{jobs}"
    )


class Prometheus:
    """``prometheus`` scraping ``targets`` (job -> host:port) every second, under ``folder``."""

    def __init__(self, folder: Path, targets: dict[str, str]) -> None:
        binary = tool("prometheus")
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "prometheus.yml"
        config.write_text(scrape_config(targets))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = folder / "prometheus.log"
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def output(self) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.output()}")
            try:
                if self.client.get("/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus not ready in {timeout} s:\n{self.output()}")
            time.sleep(0.1)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar) ``expr`` gives now, as the HTTP API returns it."""
        response = self.client.get("/api/v1/query", params={"query": expr})
        body = response.json()
        assert body.get("status") == "success", f"query {expr!r} failed: {body}"
        data = body["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def value(self, expr: str) -> float:
        """The one value ``expr`` gives (fails if it gives none or several)."""
        result = self.query(expr)
        assert len(result) == 1, f"{expr}: expected one series, got {result}"
        return float(result[0]["value"][1])

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
