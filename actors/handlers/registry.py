"""Find the handler a task names: built in, registered by entry point, or ``module:function``.

There is no registry that fills itself as modules are imported: the built-ins are an explicit
dict, and user handlers are found through package metadata or an import path, looked up once
per name and cached.
"""

from __future__ import annotations

import importlib
import re
import sys
import threading
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from batchfarm.actors.errors import UnknownHandlerError
from batchfarm.actors.handlers.builtin import checksum, checksum_params, noop, noop_params
from batchfarm.actors.handlers.context import TaskContext
from batchfarm.actors.handlers.hls import hls, hls_params
from batchfarm.actors.handlers.ladder import check_params as check_ladder_params
from batchfarm.actors.handlers.ladder import ladder
from batchfarm.actors.handlers.probe import check_params as check_probe_params
from batchfarm.actors.handlers.probe import probe
from batchfarm.actors.handlers.segments import (
    check_encode_params,
    concat,
    concat_params,
    encode_segment,
    split,
    split_params,
)
from batchfarm.actors.handlers.thumbnail import check_params as check_thumbnail_params
from batchfarm.actors.handlers.thumbnail import thumbnail
from batchfarm.actors.handlers.transcode import check_params as check_transcode_params
from batchfarm.actors.handlers.transcode import transcode

#: What a task does: given its context, do the work and return JSON-able metadata (or None).
Handler = Callable[[TaskContext], Mapping[str, Any] | None]

BUILTINS: dict[str, Handler] = {"noop": noop, "checksum": checksum, "transcode": transcode}

#: Submit-time checks of the built-ins' params, each raising the TaskError its task would.
PARAM_CHECKS: dict[str, Callable[[dict[str, Any]], object]] = {
    "noop": noop_params,
    "checksum": checksum_params,
    "transcode": check_transcode_params,
}
# Facts and pictures of media files (probe.py, thumbnail.py).
BUILTINS.update(probe=probe, thumbnail=thumbnail)
PARAM_CHECKS.update(probe=check_probe_params, thumbnail=check_thumbnail_params)
# Segment-parallel encoding (segments.py): split at keyframes, join without re-encoding;
# adaptive-bitrate ladders: a rendition per task (ladder.py), packaged as HLS (hls.py).
BUILTINS.update(split=split, encode_segment=encode_segment, concat=concat, ladder=ladder, hls=hls)
PARAM_CHECKS.update(
    split=split_params,
    encode_segment=check_encode_params,
    concat=concat_params,
    ladder=check_ladder_params,
    hls=hls_params,
)

#: Distributions register handlers under this entry point group:
#: ``[options.entry_points] batchfarm.handlers = resize = mypkg.handlers:resize``.
ENTRY_POINT_GROUP = "batchfarm.handlers"

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
#: ``package.module:function``; the function may not be private.
_REF = re.compile(rf"(?P<module>{_IDENT}(?:\.{_IDENT})*):(?P<function>[A-Za-z]\w*)")

_cache: dict[str, Handler] = {}
_lock = threading.Lock()


def resolve(name: str) -> Handler:
    """The handler called ``name``, looked up once and cached.

    A built-in, else an entry point in ``batchfarm.handlers``, else ``module:function``
    imported from the worker's environment. Raises :class:`UnknownHandlerError` (a permanent
    task failure) naming the handler and why: not found (listing the known ones), failed to
    import, or not callable.
    """
    with _lock:
        found = _cache.get(name)
    if found is not None:
        return found
    found = _lookup(name)
    with _lock:
        _cache[name] = found
    return found


def check_handler_name(name: str) -> None:
    """Cheap submit-time check of a handler name; imports no user code.

    Accepts a built-in, an entry point registered in *this* environment (only metadata is
    read), or a well-formed ``module:function`` outside the standard library; whether that
    one imports is up to the workers' environment, where a failure is permanent. Raises
    :class:`UnknownHandlerError` otherwise.
    """
    if not isinstance(name, str) or not name:
        raise UnknownHandlerError(f"handler {name!r}: expected a non-empty name")
    if name in BUILTINS or _entry_point(name) is not None:
        return
    if ":" in name:
        _parse_ref(name)
        return
    raise _unknown(name)


def check_params(name: str, params: dict[str, Any]) -> None:
    """Check a handler's params at submit time, without running it.

    A built-in's params are checked as its task would check them, raising the same permanent
    :class:`~batchfarm.actors.errors.TaskError`. Other handlers check their own params when
    they run: checking them here would mean importing user code in the manager.
    """
    check = PARAM_CHECKS.get(name)
    if check is not None:
        check(params)


def known_names() -> list[str]:
    """Built-in names, then the entry points registered in this environment, sorted."""
    registered = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)} - set(BUILTINS)
    return sorted(BUILTINS) + sorted(registered)


def clear_cache() -> None:
    """Forget every resolution (after installing or changing handler code)."""
    with _lock:
        _cache.clear()


def _lookup(name: str) -> Handler:
    if name in BUILTINS:
        return BUILTINS[name]
    ep = _entry_point(name)
    if ep is not None:
        try:
            obj = ep.load()
        except Exception as exc:  # user code may raise anything while it imports
            raise UnknownHandlerError(
                f"handler {name!r}: entry point {ep.value!r} in {ENTRY_POINT_GROUP} failed"
                f" to load: {type(exc).__name__}: {exc}"
            ) from exc
        return _check_callable(name, obj)
    if ":" in name:
        module_name, function = _parse_ref(name)
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # user code may raise anything while it imports
            raise UnknownHandlerError(
                f"handler {name!r}: module {module_name} failed to import:"
                f" {type(exc).__name__}: {exc}"
            ) from exc
        if not hasattr(module, function):
            raise UnknownHandlerError(f"handler {name!r}: module {module_name} has no {function}")
        return _check_callable(name, getattr(module, function))
    raise _unknown(name)


def _entry_point(name: str) -> EntryPoint | None:
    # Two distributions may claim one name: the first found wins, as for console scripts.
    return next(iter(entry_points(group=ENTRY_POINT_GROUP, name=name)), None)


def _parse_ref(name: str) -> tuple[str, str]:
    match = _REF.fullmatch(name)
    if match is None:
        raise UnknownHandlerError(
            f"handler {name!r}: expected module:function (dotted module path, a colon, and a"
            " public function name)"
        )
    module_name = match["module"]
    # A task names code to run: the standard library is never a handler (no os:system).
    if module_name.split(".")[0] in sys.stdlib_module_names:
        raise UnknownHandlerError(
            f"handler {name!r}: {module_name} is a standard library module, not a handler"
        )
    return module_name, match["function"]


def _check_callable(name: str, obj: object) -> Handler:
    if not callable(obj):
        raise UnknownHandlerError(
            f"handler {name!r}: {type(obj).__name__} object is not callable, expected a"
            " function taking a TaskContext"
        )
    # Its signature is the author's promise: it is called with a TaskContext.
    return obj


def _unknown(name: str) -> UnknownHandlerError:
    return UnknownHandlerError(
        f"unknown handler {name!r}: expected one of {', '.join(known_names())},"
        f" an entry point in {ENTRY_POINT_GROUP}, or module:function"
    )
