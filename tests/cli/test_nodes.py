"""The node verbs against a real grid: nodes, cordon, uncordon, pause, resume."""

from __future__ import annotations

import json
import socket

from tests.cli.grid import api, cli
from tests.worker.grid import wait_for

NODE = socket.gethostname()  # `batchfarm up` names its node after the host


def nodes(env: dict[str, str]) -> dict[str, dict]:
    """The nodes as the API reports them (asked in this process: waits poll this often)."""
    with api(env) as client:
        return {node["id"]: node for node in client.nodes()}


def test_nodes_lists_the_local_node_and_its_workers(grid):
    wait_for(lambda: nodes(grid).get(NODE, {}).get("state") == "up", 20, "the node to report")
    listed = cli(grid, "nodes", "--json")
    assert listed.returncode == 0, listed.stderr
    node = {n["id"]: n for n in json.loads(listed.stdout)["nodes"]}[NODE]
    assert len(node["workers"]) == 2
    assert node["cordoned"] is False
    table = cli(grid, "nodes")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert "workers busy/total" in header
    assert "last heartbeat" in header
    assert row.split()[:4] == [NODE, "default", "up", "no"]
    assert "0/2" in row


def test_cordon_and_uncordon(grid):
    wait_for(lambda: NODE in nodes(grid), 20, "the node to report")
    run = cli(grid, "cordon", NODE)
    assert (run.returncode, run.stdout) == (0, f"{NODE}: cordoned\n"), run.stderr
    assert nodes(grid)[NODE]["cordoned"] is True
    run = cli(grid, "uncordon", NODE)
    assert (run.returncode, run.stdout) == (0, f"{NODE}: not cordoned\n"), run.stderr
    assert nodes(grid)[NODE]["cordoned"] is False


def test_pause_and_resume_reach_the_node(grid):
    wait_for(lambda: nodes(grid).get(NODE, {}).get("state") == "up", 20, "the node to report")
    run = cli(grid, "pause", NODE)
    assert (run.returncode, run.stdout) == (0, f"{NODE}: pause sent\n"), run.stderr
    wait_for(lambda: nodes(grid)[NODE]["state"] == "paused", 20, "the node to pause")
    run = cli(grid, "resume", NODE)
    assert (run.returncode, run.stdout) == (0, f"{NODE}: resume sent\n"), run.stderr
    wait_for(lambda: nodes(grid)[NODE]["state"] == "up", 20, "the node to resume")


def test_an_unknown_node_or_job_is_named(grid):
    run = cli(grid, "drain", "no-such-node")
    assert run.returncode == 1
    assert "no-such-node" in run.stderr
    run = cli(grid, "status", "no-such-job")
    assert run.returncode == 1
    assert "no-such-job" in run.stderr


def test_without_the_grids_token_a_verb_is_refused_naming_the_setting(grid):
    tokenless = {k: v for k, v in grid.items() if k != "BATCHFARM_API_TOKEN"}
    run = cli(tokenless, "nodes")
    assert run.returncode == 1
    assert run.stderr.startswith("batchfarm: ")
    assert "BATCHFARM_API_TOKEN" in run.stderr
    wrong = cli({**grid, "BATCHFARM_API_TOKEN": "not-the-token"}, "status")
    assert wrong.returncode == 1
    assert "[api] token" in wrong.stderr
