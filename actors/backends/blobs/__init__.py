"""The blob store: objects under keys, streamed in chunks, behind one interface.

A :class:`BlobStore` holds the grid's bytes: raw job inputs, interim and final outputs.
Every implementation (a local directory, S3) keeps the same contract, checked by one test
suite:

- ``put`` streams from bytes, a binary file or an iterator of chunks and makes the object
  appear whole or not at all: a reader never sees half an object.
- ``get`` streams the object (or a byte range of it) in chunks of at most ``chunk_size``,
  so memory stays flat however large the object is.
- Keys are validated by :func:`batchfarm.actors.backends.blobs.keys.check_key` before any
  I/O; a bad key is a :class:`~batchfarm.actors.errors.BlobKeyError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, cast

from batchfarm.actors.errors import BlobNotFoundError

#: What ``put`` accepts: the bytes themselves, a binary file, or an iterator of chunks.
Source = bytes | BinaryIO | Iterable[bytes]

#: Default chunk size for streaming reads and writes (boto3's multipart default).
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024


@dataclass(frozen=True)
class BlobInfo:
    """What the store knows about one object."""

    key: str
    size: int
    #: Hex SHA-256 of the content, when the store knows it without reading the object.
    sha256: str | None
    #: Last modification, in seconds since the epoch.
    modified: float


@dataclass(frozen=True)
class BlobPage:
    """One page of a listing, in key order."""

    items: list[BlobInfo]
    #: Pass as ``after`` to get the next page; None on the last page.
    next_after: str | None


class BlobStore(ABC):
    """Objects under validated keys, streamed in chunks (see the module docstring)."""

    #: Largest chunk ``get`` yields and the unit ``put`` writes in.
    chunk_size: int

    @abstractmethod
    def put(self, key: str, source: Source) -> BlobInfo:
        """Store ``source`` under ``key``, replacing any object there; return its info."""

    @abstractmethod
    def get(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Stream the bytes ``[start, end)`` of the object (the whole object by default).

        Raises :class:`~batchfarm.actors.errors.BlobNotFoundError` before the first chunk if
        there is no such object, and :class:`~batchfarm.actors.errors.BlobError` for a range
        that starts past the end of the object.
        """

    @abstractmethod
    def head(self, key: str) -> BlobInfo:
        """Return the object's info; raise ``BlobNotFoundError`` if there is none."""

    @abstractmethod
    def list(self, prefix: str = "", after: str | None = None, limit: int = 1000) -> BlobPage:
        """List up to ``limit`` objects whose keys start with ``prefix``, after key ``after``."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete the object; deleting a missing object is not an error."""

    @abstractmethod
    def url(self, key: str, expires_s: int = 3600) -> str:
        """A URL from which the object can be read (presigned where the store supports it)."""

    def close(self) -> None:  # noqa: B027 - most backends have nothing to release
        """Release connections; the store is unusable afterwards."""

    # Conveniences built on the calls above; backends may override them with faster paths.

    def iter_list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Every object under ``prefix``, page after page."""
        after: str | None = None
        while True:
            page = self.list(prefix, after=after)
            yield from page.items
            if page.next_after is None:
                return
            after = page.next_after

    def exists(self, key: str) -> bool:
        """Whether an object exists under ``key``."""
        try:
            self.head(key)
        except BlobNotFoundError:
            return False
        return True

    def put_file(self, key: str, path: Path) -> BlobInfo:
        """Upload a local file."""
        with path.open("rb") as f:
            return self.put(key, f)

    def get_file(self, key: str, path: Path) -> BlobInfo:
        """Download an object to a local file, written whole or not at all."""
        tmp = path.with_name(f".{path.name}.part")
        try:
            with tmp.open("wb") as f:
                for chunk in self.get(key):
                    f.write(chunk)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return self.head(key)

    def read(self, key: str) -> bytes:
        """The whole object in memory: for small objects only (params, manifests)."""
        return b"".join(self.get(key))


def iter_source(source: Source, chunk_size: int) -> Iterator[bytes | memoryview]:
    """A ``put``'s source as non-empty byte chunks: bytes sliced, files read, iterables passed.

    Every backend streams a put through this, so they accept exactly the same sources.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")
        for offset in range(0, len(view), chunk_size):
            yield view[offset : offset + chunk_size]
        return
    # Typed as objects: callers outside mypy's reach pass str, text files and the like.
    pieces: Iterable[object]
    if hasattr(source, "read"):
        pieces = iter(partial(cast(BinaryIO, source).read, chunk_size), b"")
    else:
        pieces = source
    for piece in pieces:
        if isinstance(piece, bytes):
            if piece:
                yield piece
        elif isinstance(piece, bytearray | memoryview):
            if piece:
                yield memoryview(piece).cast("B")
        else:
            raise TypeError(
                "put needs bytes, a binary file or an iterable of bytes; "
                f"got a {type(piece).__name__} from the source"
            )
