"""Object keys: what a valid key is, checked before any I/O by every blob store.

A key is S3-shaped (``jobs/<job>/<stage>/<part>``) and stricter, so that the same key is
safe as a relative path in the local-directory store:

- non-empty valid Unicode text (no lone surrogates), at most 1,024 UTF-8 bytes (S3's limit);
- segments separated by ``/``: no leading or trailing ``/``, no empty segment (``a//b``),
  no ``.`` or ``..`` segment, none longer than 255 UTF-8 bytes (a file name's limit);
- no NUL, no backslash, no control character (C0, DEL, C1).

Letters of any script, spaces and punctuation are allowed: media file names carry them.
Keys compare and sort by code point, which is the UTF-8 byte order S3 lists in.

The key space has no reserved names: the local store keeps objects under ``objects/`` and
its own temporary files under ``tmp/``, so no key can reach or shadow them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from batchfarm.actors.errors import BlobKeyError

#: S3's limit on a key's length, in UTF-8 bytes.
MAX_KEY_BYTES = 1024
#: The usual filesystem limit on one path component (NAME_MAX), in bytes.
MAX_SEGMENT_BYTES = 255

# C0 controls (NUL among them), DEL, C1 controls, and the backslash some tools read as "/".
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
# How much of a bad key an error message shows: enough to find it, not a 1 KiB wall.
_SHOWN_CHARS = 80


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid object key; raise :class:`BlobKeyError` if not.

    The error's message names the key and what was expected of it.
    """
    problem = _problem(key, partial=False)
    if problem is not None:
        raise BlobKeyError(f"bad blob key {_show(key)}: expected {problem}")
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if some valid key could start with it; raise :class:`BlobKeyError`.

    A listing prefix matches keys as plain text, as S3's does. It is empty (every key), a
    folder ending in ``/`` (``jobs/j1/``), or any leading part of a key (``jobs/j1`` matches
    ``jobs/j1/x``, ``jobs/j10/x`` and ``jobs/j1.txt``). So its last, partial segment may be
    empty, ``.`` or ``..`` (``..`` leads ``..x``); every complete segment before it obeys the
    key rules, so a prefix can never climb out of the store.
    """
    if prefix == "":
        return prefix
    problem = _problem(prefix, partial=True)
    if problem is not None:
        raise BlobKeyError(f"bad blob key prefix {_show(prefix)}: expected {problem}")
    return prefix


def is_valid_key(key: str) -> bool:
    """Whether ``key`` is a valid object key (for filtering, where a bad key is not an error)."""
    return _problem(key, partial=False) is None


def key_path(base: Path, key: str) -> Path:
    """The path of ``key`` under the directory ``base``, which it cannot leave.

    The check is lexical (no filesystem access); the local store adds its own defence against
    symlinks planted in the tree.
    """
    check_key(key)
    path = base.joinpath(*key.split("/"))
    # check_key already rules out every way out; this keeps the promise if the rules change.
    normal = Path(os.path.normpath(path))
    if normal != path or not normal.is_relative_to(base) or normal == base:
        raise BlobKeyError(f"bad blob key {_show(key)}: expected a path inside {base}")
    return path


def _problem(text: object, *, partial: bool) -> str | None:
    """What is wrong with ``text`` as a key (or, if ``partial``, a key prefix); None if fine."""
    if not isinstance(text, str):
        return f"a str, not {type(text).__name__}"
    return _text_problem(text) or _segments_problem(text, partial=partial)


def _text_problem(text: str) -> str | None:
    """What is wrong with the key as a whole: emptiness, encoding, length, characters."""
    if text == "":
        return "a non-empty key"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return f"valid Unicode text (a lone surrogate is at index {exc.start})"
    if size > MAX_KEY_BYTES:
        return f"at most {MAX_KEY_BYTES:,} UTF-8 bytes, not {size:,}"
    bad = _FORBIDDEN.search(text)
    if bad is None:
        return None
    char = bad.group()
    if char == "\\":
        what = "no backslash (use '/' between segments)"
    elif char == "\x00":
        what = "no NUL character"
    else:
        what = f"no control character (U+{ord(char):04X})"
    return f"{what}; found one at index {bad.start()}"


def _segments_problem(text: str, *, partial: bool) -> str | None:
    """What is wrong with the key's '/'-separated segments."""
    if text.startswith("/"):
        return "no leading '/' (keys are relative)"
    segments = text.split("/")
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        seg_size = len(segment.encode("utf-8"))
        if seg_size > MAX_SEGMENT_BYTES:
            return (
                f"segments of at most {MAX_SEGMENT_BYTES} UTF-8 bytes, not {seg_size} "
                f"({_show(segment)})"
            )
        # A prefix's last segment may be cut short: "", "." and ".." all lead valid keys.
        if partial and index == last:
            break
        if segment == "":
            if index == last:
                return "no trailing '/' (a key names an object, not a folder)"
            return "no empty segment ('//')"
        if segment in (".", ".."):
            return f"no {segment!r} segment"
    return None


def _show(text: object) -> str:
    """The key as an error message shows it: quoted and escaped, long ones cut short."""
    if isinstance(text, str) and len(text) > _SHOWN_CHARS:
        return f"{text[:_SHOWN_CHARS]!r}… ({len(text):,} characters)"
    return repr(text)
