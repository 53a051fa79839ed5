"""The local-directory store beyond the contract: atomicity across processes, cleanup on
failure, symlink refusal, object/folder conflicts, checksum storage and flat memory."""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchfarm.actors.backends.blobs import DEFAULT_CHUNK_SIZE
from batchfarm.actors.backends.blobs.local import STALE_TEMP_S, LocalBlobStore
from batchfarm.actors.backends.blobs.localfs import SHA256_XATTR
from batchfarm.actors.errors import BlobError, BlobKeyError, BlobNotFoundError
from tests.blobs.blob_child import version

CHILD = Path(__file__).with_name("blob_child.py")
CHUNK = 64 * 1024
MiB = 1024 * 1024


@pytest.fixture
def root(tmp_path):
    return tmp_path / "root"


@pytest.fixture
def store(root):
    return LocalBlobStore(root, chunk_size=CHUNK)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def temp_files(root: Path) -> list[str]:
    return sorted(os.listdir(root / "tmp"))


def run_child(*args, timeout=100):
    done = subprocess.run(
        [sys.executable, str(CHILD), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def start_child():
    """Start blob_child.py commands; any still running at the end are killed and reaped."""
    children = []

    def start(*args):
        child = subprocess.Popen(
            [sys.executable, str(CHILD), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        return child

    yield start
    for child in children:
        if child.returncode is None:
            child.kill()
            child.communicate()


def finish(child, timeout=100):
    out, err = child.communicate(timeout=timeout)
    assert child.returncode == 0, err
    return json.loads(out)


# -- layout and checksum storage ---------------------------------------------------------------


def test_objects_live_under_objects_with_their_checksum(store, root):
    data = b"frame data" * 1000
    store.put("a/b c.bin", data)
    path = root / "objects" / "a" / "b c.bin"
    assert path.read_bytes() == data
    assert os.getxattr(path, SHA256_XATTR) == sha(data).encode()
    assert temp_files(root) == []
    assert store.url("a/b c.bin") == path.as_uri()
    assert "b%20c.bin" in store.url("a/b c.bin")


def test_head_list_and_get_file_carry_the_checksum(store, tmp_path):
    # The contract lets a store say None where it cannot know (S3's multipart objects and
    # listings); the local store always knows, from the xattr.
    data = os.urandom(CHUNK * 3 + 5)
    store.put("a/big", iter([data[:CHUNK], data[CHUNK:]]))
    store.put("a/small", b"small")
    assert store.head("a/big").sha256 == sha(data)
    assert store.get_file("a/big", tmp_path / "big").sha256 == sha(data)
    assert {i.key: i.sha256 for i in store.iter_list("a/")} == {
        "a/big": sha(data),
        "a/small": sha(b"small"),
    }


def test_without_xattr_support_head_reports_no_checksum(store, monkeypatch):
    def unsupported(*args, **kwargs):
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", unsupported)
    data = b"no xattrs here"
    info = store.put("plain", data)
    assert info.sha256 == sha(data)  # computed while streaming, whatever the filesystem
    assert store.head("plain").sha256 is None
    assert store.list().items[0].sha256 is None
    assert store.read("plain") == data


def test_a_missing_or_garbled_checksum_reads_as_none(store, root):
    store.put("x", b"data")
    path = root / "objects" / "x"
    os.setxattr(path, SHA256_XATTR, b"not a sha256")
    assert store.head("x").sha256 is None
    os.removexattr(path, SHA256_XATTR)
    assert store.head("x").sha256 is None
    assert store.put("x", b"data").sha256 == store.head("x").sha256 == sha(b"data")


# -- reading -----------------------------------------------------------------------------------


def test_get_raises_at_the_call_not_at_the_first_chunk(store):
    with pytest.raises(BlobNotFoundError):
        store.get("missing")
    store.put("short", b"0123")
    with pytest.raises(BlobError, match="past the object's end"):
        store.get("short", 5)


def test_a_started_read_keeps_its_version_through_an_overwrite(store):
    first, second = os.urandom(3 * CHUNK), os.urandom(2 * CHUNK)
    store.put("v", first)
    reader = store.get("v")
    head = next(reader)
    store.put("v", second)
    assert head + b"".join(reader) == first
    assert store.read("v") == second


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_readers_give_their_file_back(store):
    store.put("r", os.urandom(3 * CHUNK))
    before = open_fds()
    reader = store.get("r")
    next(reader)
    assert open_fds() == before + 1
    reader.close()
    assert open_fds() == before
    assert list(reader) == []

    abandoned = store.get("r")
    assert open_fds() == before + 1
    del abandoned
    gc.collect()
    assert open_fds() == before

    for _ in store.get("r"):
        pass
    assert open_fds() == before


def test_a_fifo_in_the_tree_is_refused_without_hanging(store, root):
    os.mkfifo(root / "objects" / "pipe")
    with pytest.raises(BlobError, match="regular file"):
        store.get("pipe")
    assert [i.key for i in store.list().items] == []


# -- failures leave nothing behind -------------------------------------------------------------


def test_a_source_that_raises_midway_leaves_no_temp_file_and_no_object(store, root):
    def source():
        for _ in range(3):
            yield os.urandom(CHUNK)
        raise ConnectionResetError("upload source went away")

    with pytest.raises(ConnectionResetError, match="went away"):
        store.put("deep/new/object", source())
    assert temp_files(root) == []
    assert os.listdir(root / "objects") == []  # not even its folders


def test_a_chunk_of_the_wrong_type_leaves_no_temp_file(store, root):
    with pytest.raises(TypeError, match="got a str"):
        store.put("typed", iter([b"bytes first", "then text"]))
    assert temp_files(root) == []
    assert not store.exists("typed")


def test_a_write_error_is_a_blob_error_naming_the_key_and_cleans_up(store, root, monkeypatch):
    store.put("disk/full", b"version 1")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(BlobError, match=r"disk/full.*No space left"):
        store.put("disk/full", b"version 2")
    monkeypatch.undo()
    assert temp_files(root) == []
    assert store.read("disk/full") == b"version 1"


def test_stale_temp_files_are_swept_when_a_store_opens(store, root):
    old, fresh = root / "tmp" / "123-dead.part", root / "tmp" / "456-live.part"
    old.write_bytes(b"left by a killed writer")
    fresh.write_bytes(b"a writer still at work")
    long_ago = time.time() - STALE_TEMP_S - 60
    os.utime(old, (long_ago, long_ago))
    LocalBlobStore(root)
    assert temp_files(root) == ["456-live.part"]


# -- symlinks ----------------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path):
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(b"secret")
    return folder


KEY_CALLS = {
    "get": lambda s, k: s.get(k),
    "head": lambda s, k: s.head(k),
    "delete": lambda s, k: s.delete(k),
    "url": lambda s, k: s.url(k),
    "put": lambda s, k: s.put(k, b"overwritten"),
}


@pytest.mark.parametrize("call", KEY_CALLS.values(), ids=KEY_CALLS.keys())
def test_a_symlinked_folder_is_refused(store, root, outside, call):
    (root / "objects" / "evil").symlink_to(outside)
    with pytest.raises(BlobError, match="symlink") as caught:
        call(store, "evil/secret.txt")
    assert not isinstance(caught.value, BlobNotFoundError)
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"secret"
    assert store.list().items == []
    assert store.list("evil/").items == []


@pytest.mark.parametrize("call", KEY_CALLS.values(), ids=KEY_CALLS.keys())
def test_a_symlinked_object_is_refused(store, root, outside, call):
    link = root / "objects" / "link"
    link.symlink_to(outside / "secret.txt")
    with pytest.raises(BlobError, match="symlink"):
        call(store, "link")
    assert link.is_symlink()
    assert (outside / "secret.txt").read_bytes() == b"secret"
    assert store.list().items == []


def test_a_symlink_pointing_inside_the_store_is_refused_too(store, root):
    store.put("real/x", b"inside")
    (root / "objects" / "alias").symlink_to(root / "objects" / "real")
    with pytest.raises(BlobError, match="symlink"):
        store.get("alias/x")
    with pytest.raises(BlobError, match="symlink"):
        store.put("alias/y", b"y")
    assert [i.key for i in store.list().items] == ["real/x"]


def test_a_deep_symlink_is_refused_on_write(store, root, outside):
    store.put("a/b/kept", b"k")
    (root / "objects" / "a" / "b" / "c").symlink_to(outside)
    with pytest.raises(BlobError, match="symlink"):
        store.put("a/b/c/d/e", b"x")
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert temp_files(root) == []


def test_a_symlinked_objects_folder_is_refused(store, root, outside):
    store.put("k", b"v")
    (root / "objects").rename(root / "moved")
    (root / "objects").symlink_to(outside)
    with pytest.raises(BlobError, match="objects"):
        store.get("secret.txt")
    with pytest.raises(BlobError, match="objects"):
        store.put("planted", b"x")
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    with pytest.raises(BlobError, match="objects"):
        LocalBlobStore(root)


# -- objects and folders -----------------------------------------------------------------------


def test_an_object_cannot_become_a_folder(store, root):
    store.put("a", b"object a")
    with pytest.raises(BlobError, match=r"'a/b'.*'a', which is an object"):
        store.put("a/b", b"x")
    with pytest.raises(BlobError, match="which is an object"):
        store.put("a/b/c/d", b"x")
    with pytest.raises(BlobNotFoundError):
        store.head("a/b")
    assert store.read("a") == b"object a"
    assert temp_files(root) == []


def test_a_folder_cannot_become_an_object(store, root):
    store.put("x/y/z", b"deep")
    for key in ("x", "x/y"):
        with pytest.raises(BlobError, match=f"'{key}'.*folder of other objects"):
            store.put(key, b"x")
        with pytest.raises(BlobNotFoundError, match="folder of other objects"):
            store.get(key)
        with pytest.raises(BlobNotFoundError):
            store.head(key)
        store.delete(key)  # not an object: nothing to delete
    assert store.read("x/y/z") == b"deep"
    assert temp_files(root) == []
    store.delete("x/y/z")
    store.put("x", b"the name is free again")
    assert store.read("x") == b"the name is free again"


def test_delete_prunes_empty_folders_but_never_the_root(store, root):
    store.put("d1/d2/d3/obj", b"x")
    store.delete("d1/d2/d3/obj")
    assert os.listdir(root / "objects") == []
    assert sorted(os.listdir(root)) == ["objects", "tmp"]

    store.put("s/a/1", b"1")
    store.put("s/b/2", b"2")
    store.delete("s/a/1")
    assert os.listdir(root / "objects" / "s") == ["b"]


def test_a_put_retries_when_a_delete_prunes_its_folder(store, root, monkeypatch):
    real_replace = os.replace
    calls = []

    def replace_after_a_prune(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:  # a concurrent delete removes the fresh, still empty folder
            os.rmdir(root / "objects" / "p" / "q")
            os.rmdir(root / "objects" / "p")
        return real_replace(*args, **kwargs)

    monkeypatch.setattr(os, "replace", replace_after_a_prune)
    store.put("p/q/r", b"made it")
    monkeypatch.undo()
    assert len(calls) == 2
    assert store.read("p/q/r") == b"made it"
    assert temp_files(root) == []


def test_list_skips_what_is_not_an_object(store, root, outside):
    store.put("ok", b"fine")
    (root / "objects" / "bad\x01name").write_bytes(b"planted")
    (root / "objects" / "link").symlink_to(outside / "secret.txt")
    (root / "objects" / "dirlink").symlink_to(outside)
    assert [i.key for i in store.list().items] == ["ok"]


def test_url_checks_its_expiry_argument(store):
    store.put("u", b"x")
    for bad in (0, -5, 7 * 24 * 3600 + 1):
        with pytest.raises(ValueError, match="expires_s"):
            store.url("u", expires_s=bad)
    with pytest.raises(BlobKeyError):
        store.url("../u")


# -- many processes ----------------------------------------------------------------------------


def test_overwrites_from_two_processes_are_atomic_for_a_reader(store, root, tmp_path, start_child):
    size, chunk, per_writer = 4 * MiB, 256 * 1024, 20
    versions = 1 + 2 * per_writer  # version 0, then writers A (odd) and B (even)
    store.put("shared/clip.mp4", version(0, size))
    ready, stop = tmp_path / "ready", tmp_path / "stop"

    reader = start_child("read", root, "shared/clip.mp4", versions, size, ready, stop)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and reader.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), "the reader never completed its first read"
        writers = [
            start_child("write", root, "shared/clip.mp4", 1, per_writer, 2, size, chunk),
            start_child("write", root, "shared/clip.mp4", 2, per_writer, 2, size, chunk),
        ]
        assert [finish(w) for w in writers] == [{"written": per_writer}] * 2
    finally:
        stop.touch()
    result = finish(reader)

    assert result["bad_count"] == 0, result["bad"]
    assert result["reads"] >= 20
    # Version 0, the final one and at least one in between: reads overlapped the writes.
    assert len(result["seen"]) >= 3, result
    final = store.read("shared/clip.mp4")
    assert final in {version(n, size) for n in (2 * per_writer - 1, 2 * per_writer)}
    assert store.head("shared/clip.mp4").sha256 == sha(final)
    assert temp_files(root) == []


def test_puts_and_deletes_racing_on_shared_folders_never_fail(store, root, start_child):
    churners = [start_child("churn", root, key, 300) for key in ("n/a/b/c", "n/a/x", "n/y")]
    results = [finish(c) for c in churners]
    assert [r["error_count"] for r in results] == [0, 0, 0], results
    assert os.listdir(root / "objects") == []  # the last delete in each folder pruned it
    assert temp_files(root) == []


@pytest.mark.slow
def test_a_1_gib_put_and_get_keep_memory_flat(root):
    size = 1024 * MiB
    result = run_child("bigio", root, size, DEFAULT_CHUNK_SIZE)
    print(f"\n1 GiB put+get: {json.dumps(result)}")
    assert result["size"] == result["received"] == size
    assert (
        result["sent_sha256"]
        == result["put_sha256"]
        == result["head_sha256"]
        == result["got_sha256"]
    )
    assert result["growth"] < 4 * DEFAULT_CHUNK_SIZE + 32 * MiB, result
