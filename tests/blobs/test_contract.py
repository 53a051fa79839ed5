"""The blob store contract: every backend passes these, through the ``blob_store`` fixture.

Sizes are derived from the store's ``chunk_size`` so that each backend is exercised across
its own chunk boundaries.
"""

from __future__ import annotations

import hashlib
import io
import random
import time
import urllib.request

import pytest

from batchfarm.actors.errors import BlobError, BlobKeyError, BlobNotFoundError


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def known_sha(reported, data: bytes) -> None:
    """A checksum ``head`` or ``list`` reports is the content's SHA-256, or None, never another.

    Stores report it when they know it without reading the object: the local store always
    (an xattr), S3 for objects uploaded in one part (its checksum), not for multipart ones
    (their checksum covers the parts' checksums) and never in listings (tests/blobs/test_local.py
    and test_s3.py check which). ``put`` always returns it: it hashes what it streams.
    """
    assert reported in (sha(data), None)


def key_order(keys, order=None):
    # S3 lists in UTF-8 byte order; that is the order the contract promises. ``order`` is
    # the ``listing_order`` fixture's, for a server that lists otherwise (SeaweedFS).
    return sorted(keys, key=order.sort_key if order else (lambda k: k.encode("utf-8")))


# -- put and get -------------------------------------------------------------------------------


def test_put_bytes_round_trip(blob_store):
    data = payload(blob_store.chunk_size * 5 // 2)
    info = blob_store.put("in/bytes.bin", data)
    assert (info.key, info.size, info.sha256) == ("in/bytes.bin", len(data), sha(data))
    assert b"".join(blob_store.get("in/bytes.bin")) == data


def test_put_from_binary_files(blob_store, tmp_path):
    data = payload(blob_store.chunk_size * 2 + 11, seed=1)
    path = tmp_path / "source.bin"
    path.write_bytes(data)
    with path.open("rb") as f:
        info = blob_store.put("in/file.bin", f)
    assert (info.size, info.sha256) == (len(data), sha(data))
    assert blob_store.read("in/file.bin") == data

    info = blob_store.put("in/bytesio.bin", io.BytesIO(data[::-1]))
    assert info.sha256 == sha(data[::-1])
    assert blob_store.read("in/bytesio.bin") == data[::-1]


def test_put_from_an_iterator_of_uneven_chunks(blob_store):
    chunk = blob_store.chunk_size
    pieces = [b"", payload(1, 2), payload(chunk + 7, 3), b"", payload(3 * chunk, 4), b"tail"]
    expected = b"".join(pieces)
    info = blob_store.put("in/iter.bin", (p for p in pieces))
    assert (info.size, info.sha256) == (len(expected), sha(expected))
    assert blob_store.read("in/iter.bin") == expected


def test_put_file_and_get_file(blob_store, tmp_path):
    data = payload(blob_store.chunk_size + 3, seed=5)
    (tmp_path / "up.bin").write_bytes(data)
    blob_store.put_file("in/up.bin", tmp_path / "up.bin")
    info = blob_store.get_file("in/up.bin", tmp_path / "down.bin")
    assert (tmp_path / "down.bin").read_bytes() == data
    assert info.size == len(data)
    known_sha(info.sha256, data)
    assert not (tmp_path / ".down.bin.part").exists()


def test_empty_object(blob_store):
    info = blob_store.put("empty", b"")
    assert (info.size, info.sha256) == (0, sha(b""))
    assert list(blob_store.get("empty")) == []
    assert blob_store.head("empty").size == 0


def test_get_yields_chunks_no_larger_than_chunk_size(blob_store):
    chunk = blob_store.chunk_size
    data = payload(chunk * 33 // 10, seed=6)
    blob_store.put("chunked", data)
    chunks = list(blob_store.get("chunked"))
    assert len(chunks) == 4
    assert all(0 < len(c) <= chunk for c in chunks)
    assert b"".join(chunks) == data

    ranged = list(blob_store.get("chunked", 5, 5 + 2 * chunk + 1))
    assert all(0 < len(c) <= chunk for c in ranged)
    assert b"".join(ranged) == data[5 : 5 + 2 * chunk + 1]


def test_overwrite_replaces_content_size_and_checksum(blob_store):
    first, second = payload(5000, seed=7), payload(123, seed=8)
    blob_store.put("doc", first)
    info = blob_store.put("doc", second)
    assert blob_store.read("doc") == second
    head = blob_store.head("doc")
    assert (head.size, head.sha256) == (len(second), sha(second)) == (info.size, info.sha256)


# -- ranges ------------------------------------------------------------------------------------

# Each case maps (size, chunk_size) to a (start, end) request; Python slicing is the oracle.
RANGES = {
    "whole": lambda size, chunk: (0, None),
    "start only": lambda size, chunk: (10, None),
    "start and end": lambda size, chunk: (10, 20),
    "across chunks": lambda size, chunk: (chunk - 3, 2 * chunk + 5),
    "end past the end": lambda size, chunk: (100, size + 1000),
    "last byte": lambda size, chunk: (size - 1, None),
    "first byte": lambda size, chunk: (0, 1),
}

EMPTY_RANGES = {
    "start equals end": lambda size, chunk: (5, 5),
    "end before start": lambda size, chunk: (10, 5),
    "start at the end": lambda size, chunk: (size, None),
    "start at the end, end past it": lambda size, chunk: (size, size + 10),
}


@pytest.mark.parametrize("case", RANGES.values(), ids=RANGES.keys())
def test_ranged_get(blob_store, case):
    data = payload(blob_store.chunk_size * 5 // 2, seed=9)
    blob_store.put("ranged", data)
    start, end = case(len(data), blob_store.chunk_size)
    got = b"".join(blob_store.get("ranged", start, end))
    assert got == data[start:end]
    assert got  # every case here is non-empty: the oracle and the store agree on bytes


@pytest.mark.parametrize("case", EMPTY_RANGES.values(), ids=EMPTY_RANGES.keys())
def test_empty_ranges_stream_nothing(blob_store, case):
    data = payload(1000, seed=10)
    blob_store.put("ranged", data)
    start, end = case(len(data), blob_store.chunk_size)
    assert list(blob_store.get("ranged", start, end)) == []


def test_a_range_starting_past_the_end_is_an_error(blob_store):
    blob_store.put("short", b"0123456789")
    with pytest.raises(BlobError, match="short") as caught:
        list(blob_store.get("short", 11))
    assert not isinstance(caught.value, BlobNotFoundError)
    blob_store.put("nothing", b"")
    with pytest.raises(BlobError):
        list(blob_store.get("nothing", 1, 5))


def test_a_negative_range_is_an_error(blob_store):
    blob_store.put("short", b"0123456789")
    with pytest.raises(BlobError):
        list(blob_store.get("short", -1))
    with pytest.raises(BlobError):
        list(blob_store.get("short", 0, -3))


# -- head, missing keys, delete ----------------------------------------------------------------


def test_head_reports_size_checksum_and_time(blob_store):
    data = payload(4321, seed=11)
    put = blob_store.put("meta/one", data)
    head = blob_store.head("meta/one")
    assert (head.key, head.size, head.sha256) == ("meta/one", len(data), sha(data))
    assert abs(head.modified - time.time()) < 300
    assert abs(head.modified - put.modified) < 5


def test_missing_keys_are_not_found_errors_naming_the_key(blob_store, tmp_path):
    for call in (
        lambda: list(blob_store.get("no/such/key")),
        lambda: blob_store.head("no/such/key"),
        lambda: blob_store.read("no/such/key"),
        lambda: blob_store.get_file("no/such/key", tmp_path / "out"),
    ):
        with pytest.raises(BlobNotFoundError, match="no/such/key") as caught:
            call()
        assert isinstance(caught.value, KeyError)
    assert not blob_store.exists("no/such/key")
    assert not (tmp_path / "out").exists()


def test_delete_is_idempotent(blob_store):
    blob_store.put("gone/soon", b"x")
    assert blob_store.exists("gone/soon")
    blob_store.delete("gone/soon")
    assert not blob_store.exists("gone/soon")
    blob_store.delete("gone/soon")
    blob_store.delete("never/was/here")
    with pytest.raises(BlobNotFoundError):
        blob_store.head("gone/soon")


def test_delete_leaves_siblings_and_frees_the_name(blob_store):
    for key in ("d/x/1", "d/x/2", "d/y"):
        blob_store.put(key, key.encode())
    blob_store.delete("d/x/1")
    assert [i.key for i in blob_store.iter_list("d/")] == ["d/x/2", "d/y"]
    blob_store.delete("d/x/2")
    assert [i.key for i in blob_store.iter_list("d/")] == ["d/y"]
    blob_store.put("d/x", b"now an object")  # the name its deleted children used
    assert blob_store.read("d/x") == b"now an object"


def test_deleting_a_name_that_only_prefixes_objects_deletes_nothing(blob_store):
    blob_store.put("f/a", b"kept")
    blob_store.delete("f")
    assert blob_store.read("f/a") == b"kept"


# -- list --------------------------------------------------------------------------------------

# Neighbours of "jobs/j1/" in key order: " " < "-" < "." < "/" < "0" < "~" < "é".
KEYS = (
    [f"jobs/j1/enc/part-{i:04d}" for i in range(150)]
    + [f"jobs/j10/enc/part-{i:04d}" for i in range(60)]
    + [f"jobs/j1-extra/{i}" for i in range(30)]
    + ["jobs/j1.txt", "jobs/j1 b", "jobs/j1~", "jobs/j1é/x", "jobs/j0/x", "jobs/j2/x"]
    + ["other/x", "a", "z", "Z", "media/Café del Mar/01 Intro.mp4"]
)


def fill(store):
    for key in KEYS:
        store.put(key, key.encode("utf-8"))


def paginate(store, prefix="", after=None, limit=1000):
    pages = []
    while True:
        page = store.list(prefix, after=after, limit=limit)
        pages.append(page)
        if page.next_after is None:
            return pages
        assert page.next_after == page.items[-1].key
        after = page.next_after


def test_list_everything_in_key_order_across_pages(blob_store, listing_order):
    fill(blob_store)
    pages = paginate(blob_store, limit=17)
    keys = [i.key for page in pages for i in page.items]
    assert keys == key_order(KEYS, listing_order)
    assert len(pages) == -(-len(KEYS) // 17)
    assert all(len(page.items) == 17 for page in pages[:-1])
    assert 0 < len(pages[-1].items) <= 17
    for info in (i for page in pages for i in page.items):
        assert info.size == len(info.key.encode())
        known_sha(info.sha256, info.key.encode())
    assert [i.key for i in blob_store.iter_list()] == key_order(KEYS, listing_order)


PREFIXES = [
    "",
    "jobs/",
    "jobs/j1/",
    "jobs/j1",  # a partial segment: j1/, j1-extra/, j1.txt, j1 b, j1~, j10/, j1é/
    "jobs/j1/enc/part-00",
    "jobs/j1/enc/part-0149",  # a whole key is a prefix of itself
    "jobs/j1é",
    "media/Café del Mar/",
    "Z",
    "nothing/here/",
    "jobs/j1/enc/part-0149/",  # a key as a folder: nothing under it
]


def test_list_with_prefixes(blob_store, listing_order):
    fill(blob_store)
    for prefix in PREFIXES:
        expected = key_order((k for k in KEYS if k.startswith(prefix)), listing_order)
        pages = paginate(blob_store, prefix, limit=50)
        assert [i.key for page in pages for i in page.items] == expected, prefix


AFTERS = [
    ("", "jobs/j1/enc/part-0099"),
    ("", "jobs/j1/enc/part-00995"),  # not a key: listing resumes after where it would sort
    ("", "jobs/j1/"),
    ("", "jobs/j1"),
    ("", "a"),
    ("jobs/j1", "jobs/j1/enc/part-0140"),
    ("jobs/", "jobs/j1~"),
    ("", "zzz"),  # after everything
    ("jobs/j10/", "jobs/j0"),  # before everything under the prefix
]


def test_list_after_a_key(blob_store, listing_order):
    fill(blob_store)
    for prefix, after in AFTERS:
        expected = [
            k
            for k in key_order(KEYS, listing_order)
            if k.startswith(prefix) and listing_order.is_after(k, after)
        ]
        page = blob_store.list(prefix, after=after, limit=25)
        assert [i.key for i in page.items] == expected[:25], (prefix, after)
        assert (page.next_after is None) == (len(expected) <= 25), (prefix, after)


@pytest.mark.parametrize("prefix", ["/a", "a//", "../", "a/../b", "a\x00", "a\\b", "./"])
def test_a_bad_prefix_is_refused(blob_store, prefix):
    with pytest.raises(BlobKeyError, match="prefix"):
        blob_store.list(prefix)


def test_list_limit_must_be_positive(blob_store):
    with pytest.raises(ValueError, match="limit"):
        blob_store.list(limit=0)


# -- keys, urls, sources -----------------------------------------------------------------------

UNICODE_KEYS = [
    "media/Café del Mar/01 — Intro.mp4",
    "日本語/ファイル 1.mov",
    "emoji/🎬 take 2.mkv",
    "spaces/  leading and trailing  ",
    "Ελληνικά/αρχείο.wav",
]


def test_unicode_keys_with_spaces(blob_store):
    for n, key in enumerate(UNICODE_KEYS):
        blob_store.put(key, payload(100 + n, seed=n))
    for n, key in enumerate(UNICODE_KEYS):
        assert blob_store.read(key) == payload(100 + n, seed=n)
        assert blob_store.head(key).sha256 == sha(payload(100 + n, seed=n))
    assert [i.key for i in blob_store.iter_list()] == key_order(UNICODE_KEYS)
    assert [i.key for i in blob_store.iter_list("日本語/")] == ["日本語/ファイル 1.mov"]
    blob_store.delete(UNICODE_KEYS[0])
    assert not blob_store.exists(UNICODE_KEYS[0])


@pytest.mark.parametrize("key", ["out/plain.bin", *UNICODE_KEYS[:3]])
def test_url_is_readable(blob_store, key):
    data = payload(blob_store.chunk_size + 17, seed=12)
    blob_store.put(key, data)
    with urllib.request.urlopen(blob_store.url(key, expires_s=60)) as response:
        assert response.read() == data


BAD_KEYS = ["", "../etc/passwd", "/abs", "a//b", "a/./b", "a/", "nul\x00", "back\\slash"]
CALLS = {
    "put": lambda store, key: store.put(key, b"x"),
    "get": lambda store, key: list(store.get(key)),
    "head": lambda store, key: store.head(key),
    "delete": lambda store, key: store.delete(key),
    "url": lambda store, key: store.url(key),
}


@pytest.mark.parametrize("key", BAD_KEYS)
def test_every_call_refuses_a_bad_key(blob_store, key):
    # One store for all the calls: a store on a server costs more to set up than the calls.
    for name, call in CALLS.items():
        with pytest.raises(BlobKeyError, match="bad blob key"):
            call(blob_store, key)
        assert list(blob_store.iter_list()) == [], name


def test_a_failing_source_stores_nothing(blob_store):
    def source():
        yield payload(blob_store.chunk_size * 2, seed=13)
        raise RuntimeError("camera unplugged")

    with pytest.raises(RuntimeError, match="camera unplugged"):
        blob_store.put("new/obj", source())
    assert not blob_store.exists("new/obj")

    blob_store.put("old/obj", b"version 1")
    with pytest.raises(RuntimeError, match="camera unplugged"):
        blob_store.put("old/obj", source())
    assert blob_store.read("old/obj") == b"version 1"
    assert [i.key for i in blob_store.iter_list()] == ["old/obj"]


@pytest.mark.parametrize(
    "source", [["text chunk"], io.StringIO("text file"), [b"ok", 7]], ids=["str", "text", "int"]
)
def test_put_refuses_sources_that_are_not_bytes(blob_store, source):
    with pytest.raises(TypeError, match="bytes"):
        blob_store.put("typed", source)
    assert not blob_store.exists("typed")
