"""Child processes for the local blob store's multi-process tests; run as a script.

Each command prints one JSON line of results on stdout:

- ``write ROOT KEY FIRST COUNT STEP SIZE CHUNK``: overwrite KEY with versions FIRST,
  FIRST+STEP, ... (COUNT of them), each streamed in CHUNK-byte pieces.
- ``read ROOT KEY VERSIONS SIZE READY STOP``: read KEY in a loop, checking that every read
  is one whole version; touch READY after the first read; stop once STOP exists.
- ``churn ROOT KEY ROUNDS``: put and delete KEY ROUNDS times.
- ``putone ROOT KEY CHUNK [ENDPOINT]``: open the store and put one byte under KEY; report the
  BlobError, if any (a fresh process has its own credential chain).
- ``bigio ROOT SIZE CHUNK [ENDPOINT]``: put a generated SIZE-byte stream, get it back while
  hashing, and report the peak RSS growth over the baseline. ROOT is a folder, or an
  ``s3://bucket/prefix`` URL on the S3-compatible server at ENDPOINT (5 MiB multipart
  threshold, so the stream goes up as a multipart upload).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.backends.blobs.local import LocalBlobStore
from batchfarm.actors.errors import BlobError


def version(number: int, size: int) -> bytes:
    """Version ``number`` of an object: a pattern no other version shares at any offset."""
    block = hashlib.sha256(f"version {number}".encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def pieces(data: bytes, chunk: int) -> Iterator[bytes]:
    for offset in range(0, len(data), chunk):
        yield data[offset : offset + chunk]


def write(root: str, key: str, *numbers: int) -> dict:
    first, count, step, size, chunk = numbers
    store = LocalBlobStore(Path(root), chunk_size=chunk)
    written = range(first, first + count * step, step)
    for number in written:
        store.put(key, pieces(version(number, size), chunk))
    return {"written": len(written)}


def read(root: str, key: str, versions: int, size: int, *files: str) -> dict:
    ready, stop = files
    store = LocalBlobStore(Path(root))
    known = {hashlib.sha256(version(n, size)).hexdigest(): n for n in range(versions)}
    reads, bad, seen = 0, [], set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        stopping = os.path.exists(stop)  # checked before the read: the last read is after it
        digest = hashlib.sha256()
        try:
            for chunk in store.get(key):
                digest.update(chunk)
        except BlobError as exc:
            bad.append(str(exc))
        else:
            number = known.get(digest.hexdigest())
            if number is None:
                bad.append(f"read {reads}: not a whole version")
            else:
                seen.add(number)
        reads += 1
        if reads == 1:
            Path(ready).touch()
        if stopping and reads >= 20:
            break
    return {"reads": reads, "bad": bad[:5], "bad_count": len(bad), "seen": sorted(seen)}


def churn(root: str, key: str, rounds: int) -> dict:
    store = LocalBlobStore(Path(root))
    errors = []
    for n in range(rounds):
        try:
            store.put(key, b"churn %d" % n)
            store.delete(key)
        except BlobError as exc:
            errors.append(str(exc))
    return {"errors": errors[:5], "error_count": len(errors)}


def open_store(root: str, chunk: int, endpoint: str = "") -> BlobStore:
    """The local store at folder ``root``, or the S3 store at URL ``root`` on ``endpoint``."""
    if not root.startswith("s3://"):
        return LocalBlobStore(Path(root), chunk_size=chunk)
    from batchfarm.actors.backends.blobs.s3 import S3BlobStore
    from batchfarm.actors.settings import StorageSettings

    settings = StorageSettings(
        url=root, endpoint_url=endpoint, chunk_size=chunk, multipart_threshold=5 * 1024 * 1024
    )
    return S3BlobStore(settings)


def bigio(root: str, size: int, chunk: int, endpoint: str = "") -> dict:
    store = open_store(root, chunk, endpoint)
    block = os.urandom(chunk)
    # Warm up: lazy imports, hash objects, allocator pools and (S3) the transfer threads
    # and connections of a multipart upload belong in the baseline.
    store.put("warm", iter([block, block]))
    for _ in store.get("warm"):
        pass
    store.delete("warm")
    gc.collect()
    baseline = psutil.Process().memory_info().rss
    sent = hashlib.sha256()

    def stream() -> Iterator[bytes]:
        for n in range(size // chunk):
            piece = n.to_bytes(8, "big") + block[8:]  # every chunk differs
            sent.update(piece)
            yield piece

    started = time.monotonic()
    info = store.put("big", stream())
    put_s = time.monotonic() - started
    peak_put = _peak_rss()
    received, count = hashlib.sha256(), 0
    for piece in store.get("big"):
        received.update(piece)
        count += len(piece)
    total_s = time.monotonic() - started
    head = store.head("big")
    # VmHWM is this process's peak RSS. (Not ru_maxrss: Linux carries that over from the
    # parent's memory across fork and exec, so under a large pytest process it reports the
    # parent's peak.) The baseline is the RSS at the start, so the difference bounds the growth
    # from above.
    peak = _peak_rss()
    store.delete("big")  # a 1 GiB file must not outlive the test's temp directory
    return {
        "size": info.size,
        "received": count,
        "sent_sha256": sent.hexdigest(),
        "put_sha256": info.sha256,
        "head_sha256": head.sha256,
        "got_sha256": received.hexdigest(),
        "baseline": baseline,
        "peak": peak,
        "growth": peak - baseline,
        "put_growth": peak_put - baseline,
        "put_s": round(put_s, 2),
        "total_s": round(total_s, 2),
    }


def _peak_rss() -> int:
    """This process's peak resident set size in bytes, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def putone(root: str, key: str, chunk: int, endpoint: str = "") -> dict:
    """Open the store and put one small object; report the error, if any, as a user sees it."""
    try:
        store = open_store(root, chunk, endpoint)
        store.put(key, b"x")
    except BlobError as exc:
        return {"error": str(exc), "type": type(exc).__name__}
    return {"error": None}


COMMANDS = {"write": write, "read": read, "churn": churn, "bigio": bigio, "putone": putone}


def main(argv: list[str]) -> None:
    command, root, *rest = argv
    args = [int(a) if a.lstrip("-").isdigit() else a for a in rest]
    print(json.dumps(COMMANDS[command](root, *args)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
