"""``batchfarm up`` as an operator runs it, and the CLI when no manager is there."""

from __future__ import annotations

import signal

import psutil

from tests.cli.grid import READY, UpProcess, blob_keys, cli, grid_env
from tests.node.nodeproc import gone


def test_up_starts_a_grid_and_stops_cleanly_on_sigterm(tmp_path):
    env = grid_env(tmp_path / "state")
    up = UpProcess(tmp_path, env, "--workers", "1")
    try:
        up.wait_ready()
        line = next(line for line in up.stdout().splitlines() if line.startswith(READY))
        assert env["BATCHFARM_API_LISTEN"] in line
        assert str(tmp_path / "state") in line
        children = up.children()
        assert sorted(children) == ["manager", "node"]
        assert cli(env, "status").returncode == 0
        tree = [p.pid for p in up.ps.children(recursive=True)]
        up.proc.send_signal(signal.SIGTERM)
        assert up.wait() == 0, up.stderr()
        assert up.stdout().splitlines()[-1] == "batchfarm up: stopped"
        assert gone(tree)
    finally:
        up.close()


def test_up_stops_the_manager_and_exits_1_when_its_node_dies(tmp_path):
    env = grid_env(tmp_path / "state")
    up = UpProcess(tmp_path, env, "--workers", "1")
    try:
        up.wait_ready()
        children = up.children()
        manager = children["manager"]
        children["node"].kill()
        assert up.wait() == 1
        assert "batchfarm: the node was killed by SIGKILL; stopped the manager" in up.stderr()
        assert not manager.is_running() or manager.status() == psutil.STATUS_ZOMBIE
    finally:
        up.close()


def test_without_a_manager_every_verb_says_where_it_looked(tmp_path):
    env = grid_env(tmp_path / "state")
    listen = env["BATCHFARM_API_LISTEN"]
    expected = (
        f"batchfarm: no manager API at {listen} ([api] listen in BATCHFARM_API_LISTEN):"
        " is `batchfarm manager` or `batchfarm up` running?\n"
    )
    for args in (("status",), ("nodes",), ("cancel", "job-1"), ("results", "j", "--to", "x")):
        run = cli(env, *args)
        assert (run.returncode, run.stderr) == (1, expected), args

    config = tmp_path / "grid.toml"
    config.write_text(f'[api]\nlisten = "{listen}"\n')
    no_env = {k: v for k, v in env.items() if k != "BATCHFARM_API_LISTEN"}
    run = cli(no_env, "--config", str(config), "status")
    assert run.returncode == 1
    assert f"([api] listen in {config})" in run.stderr

    (tmp_path / "clip.bin").write_bytes(b"x" * 10)
    run = cli(env, "submit", "--handler", "checksum", str(tmp_path / "clip.bin"))
    assert (run.returncode, run.stderr) == (1, expected)
    assert blob_keys(env) == []  # nothing uploaded for a grid that is not there
