"""The S3 store's two streams: a put's source as a file to upload, an object's body as chunks.

- :class:`SourceReader` turns any ``put`` source (bytes, a binary file, an iterator of chunks)
  into the read-only, unseekable file object boto3's transfer manager uploads from, hashing
  the bytes as they pass, so one pass over the source both uploads and checksums it.
- :class:`BodyStream` yields a GET's body in chunks of at most ``chunk_size`` and, when the
  connection drops mid-body, asks for the rest of the same version (``If-Match`` its ETag)
  instead of failing the whole read.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from batchfarm.actors.backends.blobs import Source, iter_source
from batchfarm.actors.errors import BlobError

#: Times a broken body is resumed before the read fails.
RESUME_ATTEMPTS = 3


class SourceReader:
    """A put's source as an unseekable binary file that hashes what is read from it.

    ``read(n)`` returns exactly ``n`` bytes until the source runs out: the transfer manager
    takes a short read for the last part. It holds at most ``n`` bytes plus one source
    chunk, so a streamed source stays streamed. Errors the source raises propagate unchanged.
    """

    def __init__(self, source: Source, chunk_size: int) -> None:
        self._pieces = iter_source(source, chunk_size)
        self._pending: deque[bytes | memoryview] = deque()
        self._buffered = 0
        self._ended = False
        self._digest = hashlib.sha256()
        #: Bytes taken from the source so far.
        self.size = 0

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the bytes taken from the source so far."""
        return self._digest.hexdigest()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        # Unseekable on purpose: the transfer manager then reads parts one after another
        # from this one pass, never twice or out of order.
        return False

    def read(self, amount: int = -1) -> bytes:
        """Up to ``amount`` bytes (all that remain if negative); ``b""`` once the source ends."""
        while not self._ended and (amount < 0 or self._buffered < amount):
            piece = next(self._pieces, None)
            if piece is None:
                self._ended = True
                break
            self._digest.update(piece)
            self.size += len(piece)
            self._pending.append(piece)
            self._buffered += len(piece)
        wanted = self._buffered if amount < 0 else min(amount, self._buffered)
        taken: list[bytes | memoryview] = []
        left = wanted
        while left:
            piece = self._pending.popleft()
            if len(piece) > left:
                view = memoryview(piece)
                taken.append(view[:left])
                self._pending.appendleft(view[left:])
                left = 0
            else:
                taken.append(piece)
                left -= len(piece)
        self._buffered -= wanted
        return b"".join(taken)

    def close(self) -> None:
        """Drop what is buffered (the transfer manager does not close what it is given)."""
        self._pending.clear()
        self._buffered = 0


#: Opens the object's body again from a byte offset; raises BlobError if it cannot.
Reopen = Callable[[int], Any]


class BodyStream(Iterator[bytes]):
    """Chunks of one GET's body (bytes ``[start, stop)`` of one object version).

    Closes the connection's response when the body ends, on ``close()``, or when dropped
    unfinished, so an abandoned read gives its connection back to the pool.
    """

    def __init__(
        self, key: str, body: Any, *, start: int, stop: int, chunk_size: int, reopen: Reopen
    ) -> None:
        self._key = key
        self._body: Any = body
        self._pos = start
        self._stop = stop
        self._chunk_size = chunk_size
        self._reopen = reopen
        self._resumes = 0

    def __next__(self) -> bytes:
        while self._body is not None:
            if self._pos >= self._stop:
                self.close()
                break
            try:
                data: bytes = self._body.read(min(self._chunk_size, self._stop - self._pos))
            except (BotoCoreError, ClientError, OSError) as exc:
                self._resume(exc)
                continue
            if not data:
                self._resume(None)
                continue
            self._pos += len(data)
            return data
        raise StopIteration

    def _resume(self, exc: BaseException | None) -> None:
        """Ask for the rest of the object after a dropped connection or a short body."""
        self._close_body()
        if self._resumes >= RESUME_ATTEMPTS:
            why = f"{type(exc).__name__}: {exc}" if exc is not None else "the body ended early"
            raise BlobError(
                f"blob {self._key!r}: read broke off at byte {self._pos:,} of {self._stop:,} "
                f"{RESUME_ATTEMPTS + 1} times ({why})"
            ) from exc
        self._resumes += 1
        self._body = self._reopen(self._pos)

    def _close_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.close()

    def close(self) -> None:
        """Release the connection; the iterator yields nothing more."""
        self._close_body()

    def __del__(self) -> None:
        self._close_body()
