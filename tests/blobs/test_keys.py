"""Key rules: every class of bad key is refused with a message naming it; good keys pass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchfarm.actors.backends.blobs.keys import (
    MAX_KEY_BYTES,
    MAX_SEGMENT_BYTES,
    check_key,
    check_prefix,
    is_valid_key,
    key_path,
)
from batchfarm.actors.errors import BlobError, BlobKeyError

PROPERTY = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASE = Path("/srv/batchfarm/blobs/objects")

# (id, key, a word the message must carry to say what was expected)
BAD_KEYS = [
    ("empty", "", "non-empty"),
    ("1025 ascii bytes", "a" * 1025, "1,024 UTF-8 bytes"),
    ("1026 bytes in 513 chars", "é" * 513, "1,024 UTF-8 bytes"),
    ("256-byte segment", "a/" + "b" * 256, "255 UTF-8 bytes"),
    ("256-byte segment in 128 chars", "é" * 128, "255 UTF-8 bytes"),
    ("dotdot", "..", "'..' segment"),
    ("dotdot inside", "a/../b", "'..' segment"),
    ("dotdot at the end", "a/..", "'..' segment"),
    ("traversal", "../../etc/passwd", "'..' segment"),
    ("dot", ".", "'.' segment"),
    ("dot inside", "a/./b", "'.' segment"),
    ("empty segment", "a//b", "empty segment"),
    ("leading slash", "/etc/passwd", "leading '/'"),
    ("only a slash", "/", "leading '/'"),
    ("trailing slash", "a/b/", "trailing '/'"),
    ("NUL", "a\x00b", "NUL"),
    ("backslash", "a\\b", "backslash"),
    ("backslash traversal", "..\\..\\x", "backslash"),
    ("newline", "a\nb", "U+000A"),
    ("tab", "\tx", "U+0009"),
    ("unit separator", "a\x1fb", "U+001F"),
    ("DEL", "a\x7fb", "U+007F"),
    ("C1 start", "a\x80b", "U+0080"),
    ("NEL", "a\x85b", "U+0085"),
    ("C1 end", "a\x9fb", "U+009F"),
    ("lone high surrogate", "a\ud800b", "surrogate"),
    ("lone low surrogate", "\udcff", "surrogate"),
]

GOOD_KEYS = [
    "a",
    "a/b/c",
    "jobs/j1/encode/part-00001",
    "media/Café del Mar/01 Intro.mp4",
    "日本語/ファイル 1.mov",
    "🎬",
    ".hidden",
    "..x",
    "x..",
    "...",
    "a/.b/..c/...",
    " ",
    "a /b ",
    "\u00a0no-break space",
    "\u00a0\u2028\ufeff",  # not control characters (Zs, Zl, Cf): allowed
    "s" * MAX_SEGMENT_BYTES,
    "é" * 127 + "a",  # 255 bytes
    "x/" * 511 + "yy",  # exactly 1,024 bytes
    "!_.*'()-~$&@=;:+,?[]{}#%^`|<>\"",
]


@pytest.mark.parametrize(
    ("key", "expected"), [b[1:] for b in BAD_KEYS], ids=[b[0] for b in BAD_KEYS]
)
def test_bad_keys_are_refused_naming_the_key_and_the_rule(key, expected):
    with pytest.raises(BlobKeyError) as caught:
        check_key(key)
    message = str(caught.value)
    assert repr(key[:40])[:-1] in message
    assert "expected" in message
    assert expected in message
    assert isinstance(caught.value, BlobError)
    assert isinstance(caught.value, ValueError)
    assert not is_valid_key(key)


def test_a_key_that_is_not_text_is_refused():
    with pytest.raises(BlobKeyError, match="a str, not bytes"):
        check_key(b"abc")


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_good_keys_are_accepted(key):
    assert check_key(key) == key
    assert is_valid_key(key)
    assert len(key.encode()) <= MAX_KEY_BYTES


def test_exactly_which_characters_are_refused():
    for code in range(0x3000):
        char = chr(code)
        refused = code < 0x20 or 0x7F <= code <= 0x9F or char == "\\"
        assert is_valid_key(f"k{char}k") is not refused, hex(code)


GOOD_PREFIXES = ["", "a", "a/", "jobs/j1", "jobs/j1/", "a/.", "a/..", ".", "..", "x/" * 511 + "y"]
BAD_PREFIXES = [
    "/",
    "/a",
    "a//",
    "a//b",
    "../",
    "../x",
    "./",
    "a/../b",
    "a\x00",
    "a\\",
    "\ud800",
    "a" * (MAX_KEY_BYTES + 1),
    "b" * (MAX_SEGMENT_BYTES + 1) + "/",
]


@pytest.mark.parametrize("prefix", GOOD_PREFIXES)
def test_good_prefixes_are_accepted(prefix):
    assert check_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", BAD_PREFIXES)
def test_bad_prefixes_are_refused_naming_the_prefix(prefix):
    with pytest.raises(BlobKeyError, match="bad blob key prefix") as caught:
        check_prefix(prefix)
    assert repr(prefix[:40])[:-1] in str(caught.value)


def test_key_path_maps_segments_to_folders():
    assert key_path(BASE, "jobs/j1/part 1.mp4") == BASE / "jobs" / "j1" / "part 1.mp4"
    with pytest.raises(BlobKeyError):
        key_path(BASE, "../escape")


# -- properties --------------------------------------------------------------------------------


def oracle(key: str) -> bool:
    """The key rules restated independently of the implementation."""
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    if not key or len(encoded) > 1024:
        return False
    if any(ord(c) < 32 or 127 <= ord(c) <= 159 or c == "\\" for c in key):
        return False
    return all(s not in ("", ".", "..") and len(s.encode()) <= 255 for s in key.split("/"))


def assert_inside(key: str) -> None:
    """An accepted key names a path strictly inside the base, one folder per segment."""
    path = key_path(BASE, key)
    assert Path(os.path.normpath(path)) == path
    assert path.is_relative_to(BASE)
    assert path != BASE
    assert path.relative_to(BASE).parts == tuple(key.split("/"))


# Segments biased towards the interesting: traversal, separators, controls, long runs.
segments = st.one_of(
    st.sampled_from(["", ".", "..", "...", "a", "é", " ", "\\", "\x00", "\x85", "\ud800"]),
    st.text(max_size=12),
    st.text(alphabet="ab.é", min_size=250, max_size=260),
)
structured_keys = st.lists(segments, min_size=1, max_size=8).map("/".join)


@PROPERTY
@given(st.one_of(st.text(), structured_keys))
def test_any_accepted_key_maps_inside_the_root(key):
    try:
        check_key(key)
    except BlobKeyError:
        assert not oracle(key)
    else:
        assert oracle(key)
        assert_inside(key)


# Keys valid by construction: any letters but controls, surrogates and separators.
valid_segments = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="/\\"),
    min_size=1,
    max_size=20,
).filter(lambda s: s not in (".", ".."))
valid_keys = st.lists(valid_segments, min_size=1, max_size=6).map("/".join)


@PROPERTY
@given(valid_keys, st.data())
def test_every_leading_part_of_a_key_is_a_valid_prefix(key, data):
    assert check_key(key) == key
    assert_inside(key)
    cut = data.draw(st.integers(min_value=0, max_value=len(key)))
    assert check_prefix(key[:cut]) == key[:cut]
