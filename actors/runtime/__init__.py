"""The actor runtime: actors as processes with ZeroMQ mailboxes, hooks, timers and exit codes.

- :class:`Actor` and :func:`run_actor` (``actor``): an actor's hooks and its loop;
- :func:`spawn`, :class:`ActorProcess`, :func:`mailbox_address` (``process``): actors in
  child processes (spawn, never fork), dying with their parent;
- :class:`ExitCode` and :func:`describe_exit` (``exits``): how an actor process ended.

The runtime sits above messages and backends and below every actor; it never imports an
actor, a handler or the supervisor.
"""

from batchfarm.actors.runtime.actor import Actor, Timer, run_actor
from batchfarm.actors.runtime.exits import ExitCode, describe_exit
from batchfarm.actors.runtime.process import ActorProcess, mailbox_address, spawn

__all__ = [
    "Actor",
    "ActorProcess",
    "ExitCode",
    "Timer",
    "describe_exit",
    "mailbox_address",
    "run_actor",
    "spawn",
]
