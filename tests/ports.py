"""Free TCP ports for tests that stand up a manager's ROUTER."""

from __future__ import annotations

import random
import socket

#: Ports below Linux's ephemeral range (32768-60999), so a node dialling a port nobody listens
#: on can never be handed that same port as its source and connect to itself.
PORTS = (20000, 32000)


def free_port() -> int:
    """A port nobody listens on (a plain socket closes at once; a ZeroMQ one a moment later)."""
    while True:
        port = random.randrange(*PORTS)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
