"""Task handlers: what a task does, given only its :class:`TaskContext`.

Built in: ``noop``, ``checksum``, ``transcode``, ``probe``, ``thumbnail`` and the segment
handlers. User handlers register under the ``batchfarm.handlers`` entry point group or are
named as ``module:function``; :func:`resolve` finds either.
"""

from batchfarm.actors.handlers.context import TaskContext, ToolResult
from batchfarm.actors.handlers.registry import (
    BUILTINS,
    ENTRY_POINT_GROUP,
    Handler,
    check_handler_name,
    clear_cache,
    known_names,
    resolve,
)

__all__ = [
    "BUILTINS",
    "ENTRY_POINT_GROUP",
    "Handler",
    "TaskContext",
    "ToolResult",
    "check_handler_name",
    "clear_cache",
    "known_names",
    "resolve",
]
