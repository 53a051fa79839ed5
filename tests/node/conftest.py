"""Fixtures of the node tests: real ``batchfarm node`` processes over a grid in tmp."""

from __future__ import annotations

import pytest

from tests.node.nodeproc import NodeProcess
from tests.worker.grid import make_settings


@pytest.fixture
def start_node(tmp_path):
    nodes: list[NodeProcess] = []

    def start(*args: str, name: str = "node-a", env=None, prefix=()):
        node = NodeProcess(tmp_path / "state", name, *args, env=env, prefix=prefix)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.close()


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path / "state")
