"""The embedded blob store: objects as files in a local directory (``file:///path/dir``).

Layout under the root::

    objects/<key>     one regular file per object; a key's '/' segments are folders
    tmp/<id>.part     uploads in progress; never visible under objects/

Keys live only under ``objects/`` and the store's own files only under ``tmp/``, so no key can
collide with them (see :mod:`.keys` for the key rules).

Atomicity: ``put`` streams into a temp file in ``tmp/`` (same filesystem), hashing as it
goes, stores the SHA-256 as the extended attribute ``user.batchfarm.sha256`` on it, fsyncs
it, then renames it over ``objects/<key>`` and fsyncs the folder. A reader opens either the
old file or the new one, never half of one, and the checksum travels with its inode. On any
error the temp file is removed. Where the filesystem has no user xattrs, objects are stored
all the same and ``head`` reports ``sha256=None``.

Many processes may share one root: every write is a rename of a private temp file, so
concurrent puts of a key end with one of them whole (the last rename wins); a delete that
prunes a now-empty folder while a put is creating it makes that put retry its walk.

Symlinks: every path is walked one folder at a time from an open ``objects/`` descriptor with
``O_NOFOLLOW``, so a symlink planted anywhere in the tree makes the call fail instead of
being followed (a resolve-then-open check would leave a window to swap one in). ``list``
skips symlinks and entries whose names are not valid keys.

A filesystem cannot hold an object ``a`` and an object ``a/b`` at once (S3 can): storing one
when the other exists is a :class:`~batchfarm.actors.errors.BlobError`.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import os
import secrets
import stat
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path

from batchfarm.actors.backends.blobs import (
    DEFAULT_CHUNK_SIZE,
    BlobInfo,
    BlobPage,
    BlobStore,
    Source,
    iter_source,
)
from batchfarm.actors.backends.blobs.keys import check_key, check_prefix, key_path
from batchfarm.actors.backends.blobs.localfs import (
    DIR_FLAGS,
    READ_FLAGS,
    Reader,
    info_of,
    is_symlink,
    store_checksum,
    walk,
)
from batchfarm.actors.errors import BlobError, BlobNotFoundError

OBJECTS_DIR = "objects"
TMP_DIR = "tmp"
#: Temp files untouched this long belong to a writer that died; a new store removes them.
STALE_TEMP_S = 24 * 3600
#: The longest expiry S3 allows a presigned URL; accepted here so callers port unchanged.
MAX_URL_EXPIRY_S = 7 * 24 * 3600

_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# A put retries its walk when concurrent deletes prune the folders it is creating.
_COMMIT_ATTEMPTS = 50


class LocalBlobStore(BlobStore):
    """Objects as files under ``root`` (see the module docstring for layout and guarantees).

    ``url`` returns a ``file://`` URL of the object's path: expiry does not apply locally, the
    URL stays readable until the object is deleted, by processes on this machine only.
    """

    def __init__(self, root: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1 byte, not {chunk_size}")
        self.chunk_size = chunk_size
        self.root = Path(root).resolve()
        self._objects = self.root / OBJECTS_DIR
        self._tmp = self.root / TMP_DIR
        for folder in (self._objects, self._tmp):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BlobError(
                    f"blob store at {self.root}: cannot create {folder}: {exc}"
                ) from exc
            if folder.is_symlink() or not folder.is_dir():
                raise BlobError(
                    f"blob store at {self.root}: expected {folder} to be a directory, "
                    "not a symlink or a file"
                )
        self._sweep_temps()

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    # -- the interface -----------------------------------------------------------------------

    def put(self, key: str, source: Source) -> BlobInfo:
        """Store ``source`` under ``key``, whole or not at all (see the module docstring)."""
        check_key(key)
        with ExitStack() as stack:
            tmp_fd = self._open_store_dir(self._tmp, stack)
            temp, size, sha256, modified = self._write_temp(key, source, tmp_fd)
            try:
                self._commit(key, temp, tmp_fd)
            except BaseException:
                with suppress(OSError):
                    os.unlink(temp, dir_fd=tmp_fd)
                raise
        return BlobInfo(key=key, size=size, sha256=sha256, modified=modified)

    def get(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Stream bytes ``[start, end)`` of the object in chunks of at most ``chunk_size``.

        The object is opened before this returns, so a missing key or a bad range raises here,
        and the stream reads that version to the end even if the key is overwritten meanwhile.
        ``end`` past the object's end is cut to it; ``end <= start`` streams nothing.
        """
        check_key(key)
        if start < 0 or (end is not None and end < 0):
            raise BlobError(f"blob {key!r}: expected a range of bytes >= 0, not [{start}, {end})")
        fd, info = self._open_object(key)
        if start > info.st_size:
            os.close(fd)
            raise BlobError(
                f"blob {key!r}: range starts at byte {start:,}, past the object's end "
                f"({info.st_size:,} bytes)"
            )
        stop = info.st_size if end is None else min(end, info.st_size)
        return Reader(key, fd, start, max(start, stop), self.chunk_size)

    def head(self, key: str) -> BlobInfo:
        """The object's size, SHA-256 (None where xattrs are unsupported) and modification time."""
        check_key(key)
        fd, info = self._open_object(key)
        try:
            return info_of(key, fd, info)
        finally:
            os.close(fd)

    def list(self, prefix: str = "", after: str | None = None, limit: int = 1000) -> BlobPage:
        """Up to ``limit`` objects with keys starting with ``prefix`` and after ``after``.

        ``prefix`` is any leading part of a key (see :func:`.keys.check_prefix`); matching is
        plain text, as on S3. ``next_after`` is None exactly when no more objects follow.
        """
        check_prefix(prefix)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        folder, _, stem = prefix.rpartition("/")
        items: builtins.list[BlobInfo] = []
        with ExitStack() as stack:
            try:
                fd = self._open_store_dir(self._objects, stack)
                for segment in folder.split("/") if folder else []:
                    fd = os.open(segment, DIR_FLAGS, dir_fd=fd)
                    stack.callback(os.close, fd)
            except OSError:
                # No such folder, an object or a symlink in its place: nothing to list there.
                return BlobPage(items=[], next_after=None)
            found = walk(fd, f"{folder}/" if folder else "", stem, after)
            stack.callback(found.close)  # closes the folders a stopped walk still holds
            for info in found:
                if len(items) == limit:
                    return BlobPage(items=items, next_after=items[-1].key)
                items.append(info)
        return BlobPage(items=items, next_after=None)

    def delete(self, key: str) -> None:
        """Delete the object and prune folders it leaves empty; a missing object is fine."""
        check_key(key)
        segments = key.split("/")
        with ExitStack() as stack:
            try:
                fds = self._open_dirs(key, stack)
            except BlobNotFoundError:
                return
            parent, name = fds[-1], segments[-1]
            try:
                info = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return
            if stat.S_ISLNK(info.st_mode):
                raise self._symlink_error(key, key)
            if stat.S_ISDIR(info.st_mode):
                return  # a folder of other objects, not an object
            try:
                os.unlink(name, dir_fd=parent)
                os.fsync(parent)
            except FileNotFoundError:
                return  # a concurrent delete got there first
            except OSError as exc:
                raise BlobError(f"blob {key!r}: cannot delete: {exc}") from exc
            # Never the objects/ folder itself (fds[0]); stop at the first folder still in use.
            for depth in range(len(fds) - 1, 0, -1):
                try:
                    os.rmdir(segments[depth - 1], dir_fd=fds[depth - 1])
                except OSError:
                    break

    def url(self, key: str, expires_s: int = 3600) -> str:
        """A ``file://`` URL of the object's path; ``expires_s`` is checked but never expires.

        Like a presigned S3 URL it is made without looking for the object. It is refused if a
        symlink lies on the way, since whoever opens the URL will follow it.
        """
        check_key(key)
        if not 1 <= expires_s <= MAX_URL_EXPIRY_S:
            raise ValueError(f"expires_s must be 1..{MAX_URL_EXPIRY_S}, not {expires_s}")
        path = key_path(self._objects, key)
        if path.resolve() != path:
            raise self._symlink_error(key, key)
        return path.as_uri()

    # -- writing -----------------------------------------------------------------------------

    def _write_temp(self, key: str, source: Source, tmp_fd: int) -> tuple[str, int, str, float]:
        """Stream ``source`` into a new temp file; return its name, size, SHA-256 and mtime."""
        temp = f"{os.getpid()}-{secrets.token_hex(8)}.part"
        try:
            fd = os.open(temp, _TEMP_FLAGS, 0o666, dir_fd=tmp_fd)
        except OSError as exc:
            raise BlobError(
                f"blob {key!r}: cannot create a temp file in {self._tmp}: {exc}"
            ) from exc
        try:
            try:
                digest = hashlib.sha256()
                size = 0
                # Errors raised by the source itself propagate unchanged: they are the caller's.
                for chunk in iter_source(source, self.chunk_size):
                    digest.update(chunk)
                    size += len(chunk)
                    self._write_all(key, fd, chunk)
                sha256 = digest.hexdigest()
                try:
                    store_checksum(fd, sha256)
                    os.fsync(fd)
                    modified = os.fstat(fd).st_mtime  # a rename keeps it: head agrees
                except OSError as exc:
                    raise BlobError(f"blob {key!r}: cannot write: {exc}") from exc
            finally:
                os.close(fd)
        except BaseException:
            with suppress(OSError):
                os.unlink(temp, dir_fd=tmp_fd)
            raise
        return temp, size, sha256, modified

    @staticmethod
    def _write_all(key: str, fd: int, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            raise BlobError(f"blob {key!r}: cannot write: {exc}") from exc
        finally:
            view.release()

    def _commit(self, key: str, temp: str, tmp_fd: int) -> None:
        """Rename the finished temp file over the object, creating its folders as needed."""
        name = key.rsplit("/", 1)[-1]
        created: builtins.list[int] = []  # across attempts: each one's entry needs an fsync
        for _attempt in range(_COMMIT_ATTEMPTS):
            with ExitStack() as stack:
                try:
                    fds = self._open_dirs(key, stack, created=created)
                    parent = fds[-1]
                    if is_symlink(parent, name):
                        raise self._symlink_error(key, key)
                    os.replace(temp, name, src_dir_fd=tmp_fd, dst_dir_fd=parent)
                except FileNotFoundError:
                    continue  # a concurrent delete pruned a folder on the way: walk again
                except IsADirectoryError as exc:
                    raise BlobError(
                        f"blob {key!r}: cannot store an object where a folder of other objects "
                        f"({key}/…) exists: a filesystem cannot hold both"
                    ) from exc
                except OSError as exc:
                    raise BlobError(f"blob {key!r}: cannot store: {exc}") from exc
                # Make the rename durable, and the entries of the folders just created.
                try:
                    for depth in sorted({len(fds) - 1, *created}):
                        os.fsync(fds[depth])
                except OSError as exc:
                    raise BlobError(f"blob {key!r}: stored but not yet durable: {exc}") from exc
                return
        raise BlobError(f"blob {key!r}: its folders kept vanishing under concurrent deletes")

    # -- walking the tree --------------------------------------------------------------------

    def _open_store_dir(self, path: Path, stack: ExitStack) -> int:
        try:
            fd = os.open(path, DIR_FLAGS)
        except OSError as exc:
            raise BlobError(
                f"blob store at {self.root}: expected {path} to be a directory, not a symlink "
                f"or a file ({exc.strerror})"
            ) from exc
        stack.callback(os.close, fd)
        return fd

    def _open_dirs(
        self, key: str, stack: ExitStack, *, created: builtins.list[int] | None = None
    ) -> builtins.list[int]:
        """Open ``objects/`` and each folder down to the key's parent, refusing symlinks.

        Reading (``created`` is None) raises ``BlobNotFoundError`` where a folder is missing or
        is an object. Writing makes missing folders, appending to ``created`` the depth of
        each one's parent, and raises ``BlobError`` where an object is in the way.
        """
        fds = [self._open_store_dir(self._objects, stack)]
        segments = key.split("/")
        for depth, segment in enumerate(segments[:-1]):
            parent = fds[-1]
            folder = "/".join(segments[: depth + 1])
            if created is not None:
                try:
                    os.mkdir(segment, dir_fd=parent)
                    created.append(depth)
                except FileExistsError:
                    pass
                except FileNotFoundError:
                    raise  # the parent was pruned meanwhile: the caller walks again
                except OSError as exc:
                    raise BlobError(
                        f"blob {key!r}: cannot create folder {folder!r}: {exc}"
                    ) from exc
            try:
                fd = os.open(segment, DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError as exc:
                if created is not None:
                    raise
                raise _not_found(key) from exc
            except NotADirectoryError as exc:
                if is_symlink(parent, segment):
                    raise self._symlink_error(key, folder) from exc
                if created is not None:
                    raise BlobError(
                        f"blob {key!r}: cannot store it under {folder!r}, which is an object: "
                        "a filesystem cannot hold both"
                    ) from exc
                raise _not_found(key) from exc
            except OSError as exc:
                raise BlobError(f"blob {key!r}: cannot open folder {folder!r}: {exc}") from exc
            stack.callback(os.close, fd)
            fds.append(fd)
        return fds

    def _open_object(self, key: str) -> tuple[int, os.stat_result]:
        """Open the object's file for reading; the caller closes the descriptor."""
        name = key.rsplit("/", 1)[-1]
        with ExitStack() as stack:
            parent = self._open_dirs(key, stack)[-1]
            try:
                fd = os.open(name, READ_FLAGS, dir_fd=parent)
            except FileNotFoundError as exc:
                raise _not_found(key) from exc
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise self._symlink_error(key, key) from exc
                raise BlobError(f"blob {key!r}: cannot open: {exc}") from exc
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            return fd, info
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise BlobNotFoundError(f"no blob under key {key!r} (it is a folder of other objects)")
        raise BlobError(f"blob {key!r}: expected a regular file at {self._objects / key}")

    def _symlink_error(self, key: str, where: str) -> BlobError:
        return BlobError(
            f"blob {key!r}: refusing to follow the symlink at {self._objects / where}; "
            "the store holds only regular files and folders"
        )

    def _sweep_temps(self) -> None:
        # Writers that died (kill -9, power loss) leave temp files; a live writer touches its
        # own with every chunk, so only long-untouched ones are removed.
        cutoff = time.time() - STALE_TEMP_S
        with os.scandir(self._tmp) as entries:
            for entry in entries:
                with suppress(OSError):
                    if (
                        entry.name.endswith(".part")
                        and entry.is_file(follow_symlinks=False)
                        and entry.stat(follow_symlinks=False).st_mtime < cutoff
                    ):
                        os.unlink(entry.path)


def _not_found(key: str) -> BlobNotFoundError:
    return BlobNotFoundError(f"no blob under key {key!r}")
