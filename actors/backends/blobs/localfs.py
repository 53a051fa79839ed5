"""Filesystem pieces of the embedded blob store: descriptor-relative walks, reads, checksums.

Everything here works from open folder descriptors with ``O_NOFOLLOW`` (see :mod:`.local`
for why); nothing here knows the store's layout.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Generator, Iterator

from batchfarm.actors.backends.blobs import BlobInfo
from batchfarm.actors.backends.blobs.keys import is_valid_key
from batchfarm.actors.errors import BlobError

#: Extended attribute holding an object's hex SHA-256, set before the object appears.
SHA256_XATTR = "user.batchfarm.sha256"

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted in the tree must not hang the caller.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NO_XATTR = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA})
_SHA256_HEX = re.compile(rb"[0-9a-f]{64}")


class Reader(Iterator[bytes]):
    """Chunks of one opened object; owns the descriptor and closes it at the end."""

    def __init__(self, key: str, fd: int, start: int, stop: int, chunk_size: int) -> None:
        self._key = key
        self._fd: int | None = fd
        self._pos = start
        self._stop = stop
        self._chunk_size = chunk_size

    def __next__(self) -> bytes:
        if self._fd is None:
            raise StopIteration
        if self._pos >= self._stop:
            self.close()
            raise StopIteration
        try:
            data = os.pread(self._fd, min(self._chunk_size, self._stop - self._pos), self._pos)
        except OSError as exc:
            self.close()
            raise BlobError(f"blob {self._key!r}: cannot read: {exc}") from exc
        if not data:
            self.close()
            raise BlobError(
                f"blob {self._key!r}: ended at byte {self._pos:,}, expected {self._stop:,} "
                "(changed in place behind the store's back?)"
            )
        self._pos += len(data)
        return data

    def close(self) -> None:
        """Release the file; the iterator yields nothing more."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        # A caller that stops iterating early still gets its descriptor back.
        self.close()


def walk(fd: int, folder: str, stem: str, after: str | None) -> Generator[BlobInfo, None, None]:
    """The objects under the open folder ``fd`` (whose keys start with ``folder``), in key order.

    Only names starting with ``stem`` are taken, and only keys greater than ``after``.
    """
    # Sorting a folder by name + "/" puts its keys exactly where they fall in key order.
    entries: list[tuple[str, bool]] = []
    with os.scandir(fd) as scan:
        for entry in scan:
            if not entry.name.startswith(stem) or entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                entries.append((entry.name + "/", True))
            elif entry.is_file(follow_symlinks=False):
                entries.append((entry.name, False))
    entries.sort()
    for sort_name, is_folder in entries:
        key = folder + sort_name
        if not is_folder:
            if (after is None or key > after) and is_valid_key(key):
                info = _stat_entry(fd, sort_name, key)
                if info is not None:
                    yield info
            continue
        # Every key in this folder starts with `key`: skip it if they all come before `after`.
        if after is not None and key < after and not after.startswith(key):
            continue
        if not is_valid_key(key[:-1]):
            continue
        try:
            child = os.open(sort_name[:-1], DIR_FLAGS, dir_fd=fd)
        except OSError:
            continue  # deleted or swapped since the scan
        try:
            yield from walk(child, key, "", after)
        finally:
            os.close(child)


def _stat_entry(folder_fd: int, name: str, key: str) -> BlobInfo | None:
    """The info of one listed object; None if it vanished or is no longer a regular file."""
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=folder_fd)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        return info_of(key, fd, info) if stat.S_ISREG(info.st_mode) else None
    finally:
        os.close(fd)


def info_of(key: str, fd: int, info: os.stat_result) -> BlobInfo:
    """The info of the open object ``fd`` stored under ``key``."""
    return BlobInfo(key=key, size=info.st_size, sha256=read_checksum(fd), modified=info.st_mtime)


def store_checksum(fd: int, sha256: str) -> None:
    """Record ``sha256`` on the open file; filesystems without user xattrs go without."""
    try:
        os.setxattr(fd, SHA256_XATTR, sha256.encode("ascii"))
    except OSError as exc:
        if exc.errno not in _NO_XATTR:
            raise


def read_checksum(fd: int) -> str | None:
    """The SHA-256 recorded on the open file, or None if there is none (or it is garbled)."""
    try:
        value = os.getxattr(fd, SHA256_XATTR)
    except OSError as exc:
        if exc.errno in _NO_XATTR:
            return None
        raise BlobError(f"cannot read the checksum attribute {SHA256_XATTR}: {exc}") from exc
    return value.decode("ascii") if _SHA256_HEX.fullmatch(value) else None


def is_symlink(folder_fd: int, name: str) -> bool:
    """Whether ``name`` in the open folder is a symlink (False if it is gone)."""
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False
