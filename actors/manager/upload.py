"""A job's raw inputs: local files found, named as keys, and streamed to the blob store.

A spec's ``inputs.files`` are files, folders (taken whole, recursively) and globs, relative
to the spec's folder. Each file uploads to ``jobs/<job>/input/<name>``, its name being its
path relative to the spec's folder, or, for one outside it, relative to the folder holding
it (for a glob, its folder before the first wildcard). Hidden files in folders and globs
are left out. ``inputs.keys`` name objects already in the store; they are not copied.

An ``inputs.keys`` entry may also be an ``s3://bucket/key`` URL, as a user whose data lives
in S3 names it: one in the grid's own bucket, under its prefix (``[storage] url =
"s3://bucket/prefix"``), is the key below that prefix. Any other object is refused, not
copied: the grid's credentials need reach only its own bucket (least privilege), and the
user copies data in with their own (``aws s3 cp``), which also keeps a job from depending
on objects the grid does not control.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.backends.blobs.keys import MAX_KEY_BYTES, check_key, is_valid_key
from batchfarm.actors.errors import BlobKeyError, BlobNotFoundError, SpecError

if TYPE_CHECKING:
    from batchfarm.actors.manager.spec import JobSpec

#: Most files one spec may name (after folders and globs are expanded).
MAX_FILES = 100_000
#: Longest input name, so ``jobs/<64-character job id>/input/<name>`` is a valid key.
MAX_NAME_BYTES = MAX_KEY_BYTES - len("jobs//input/") - 64
_MAGIC = re.compile(r"[*?[]")
# An input given as a URL (``s3://...``, ``https://...``) rather than a path or a key.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# What a key may not hold (see keys.py); a file name's such characters become "_".
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")

#: ``progress(bytes_done, bytes_total)``, called as an upload goes.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class InputFile:
    """A local file to upload: its path, its name below ``jobs/<job>/input/``, its size."""

    path: Path
    name: str
    size: int


def input_key(job_id: str, name: str) -> str:
    """The key an input file named ``name`` uploads to."""
    return f"jobs/{job_id}/input/{name}"


def input_keys(spec: JobSpec, job_id: str) -> list[str]:
    """The job's input keys, in part order: its files' keys, then its keys."""
    return [input_key(job_id, f.name) for f in spec.files] + list(spec.keys)


def find_files(source: str, entries: Sequence[str], base_dir: Path) -> tuple[InputFile, ...]:
    """The files ``entries`` name (files, folders, globs), each named once, in order.

    Raises :class:`SpecError` for an entry naming nothing, an unreadable file, a name that
    cannot be a key, or two files that would upload to one key.
    """
    base = Path(os.path.abspath(base_dir))
    found: dict[str, InputFile] = {}
    for index, entry in enumerate(entries):
        at = f"inputs.files[{index}]"
        if _URL.match(entry):
            expected = (
                "expected a local file, folder or glob; an object already in S3 goes in"
                " inputs.keys as s3://bucket/key (--key on the command line)"
            )
            raise SpecError(source, at, entry, expected)
        paths, root = _expand(source, at, entry, base)
        for path in paths:
            name = _name(source, at, path, root)
            other = found.get(name)
            if other is not None:
                if other.path == path:
                    continue  # named twice (a file and a glob over it): one input
                expected = (
                    f"expected files with distinct names: {other.path} and {path} would both"
                    f" upload as input/{name}"
                )
                raise SpecError(source, at, entry, expected)
            if not os.access(path, os.R_OK):
                raise SpecError(source, at, str(path), "expected a readable file")
            found[name] = InputFile(path=path, name=name, size=path.stat().st_size)
            if len(found) > MAX_FILES:
                raise SpecError(source, at, entry, f"expected at most {MAX_FILES:,} files")
    return tuple(found.values())


def _expand(source: str, at: str, entry: str, base: Path) -> tuple[list[Path], Path]:
    """The files under ``entry`` in sorted order, and the folder their names start from."""
    pattern = os.path.expanduser(entry)
    if _MAGIC.search(pattern):
        parts = Path(pattern).parts
        plain = next(i for i, part in enumerate(parts) if _MAGIC.search(part))
        root = _normal(base.joinpath(*parts[:plain]))
        matches = sorted(
            _normal(base / m) for m in glob.glob(pattern, root_dir=base, recursive=True)
        )
        what = "a pattern matching at least one file"
    else:
        path = _normal(base / pattern)
        if not path.exists():
            raise SpecError(source, at, entry, f"expected an existing file or folder ({path})")
        root, matches = path.parent, [path]
        what = "a folder holding at least one file" if path.is_dir() else "a regular file"
    if root.is_relative_to(base):
        root = base
    files: list[Path] = []
    for match in matches:
        if match.is_dir():
            files.extend(_walk(match))
        elif match.is_file():
            files.append(match)
    if not files:
        raise SpecError(source, at, entry, f"expected {what}")
    return files, root


def _walk(folder: Path) -> list[Path]:
    """Every file under ``folder`` in path order, hidden files and folders left out."""
    found: list[Path] = []
    for top, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(top) / n for n in names if not n.startswith("."))
    return sorted(path for path in found if path.is_file())


def _normal(path: Path) -> Path:
    # Lexical, not resolve(): a symlinked folder keeps the name the user gave it.
    return Path(os.path.normpath(path))


def _name(source: str, at: str, path: Path, root: Path) -> str:
    """The file's key below ``input/``: its path from ``root``, unsafe characters as "_"."""
    name = "/".join(_UNSAFE.sub("_", part) for part in path.relative_to(root).parts)
    size = len(name.encode("utf-8", "surrogateescape"))
    if not is_valid_key(name) or size > MAX_NAME_BYTES:
        expected = f"expected file paths usable as keys (at most {MAX_NAME_BYTES} bytes)"
        raise SpecError(source, at, str(path), expected)
    return name


def check_keys(
    source: str, entries: Sequence[str], storage_url: str | None = None
) -> tuple[str, ...]:
    """Blob keys from ``inputs.keys``: each a valid key, none twice.

    An ``s3://bucket/key`` entry becomes its key in the blob store at ``storage_url`` (the
    grid's ``[storage] url``); with no ``storage_url`` (the manager reading a stored spec,
    which holds keys only) a URL is refused. See :func:`key_of_url`.
    """
    seen: set[str] = set()
    keys: list[str] = []
    for index, entry in enumerate(entries):
        at = f"inputs.keys[{index}]"
        key = key_of_url(source, at, entry, storage_url) if _URL.match(entry) else entry
        try:
            check_key(key)
        except BlobKeyError as e:
            raise SpecError(source, at, entry, str(e).partition(": ")[2] or str(e)) from None
        if key in seen:
            raise SpecError(source, at, entry, "expected each key once")
        seen.add(key)
        keys.append(key)
    return tuple(keys)


def key_of_url(source: str, at: str, url: str, storage_url: str | None) -> str:
    """The key ``url`` (``s3://bucket/key``) names in the blob store at ``storage_url``.

    The object must be in the grid's own bucket, under its prefix; anything else is a
    :class:`SpecError` at ``at`` that says where the object has to be.
    """
    scheme, _, rest = url.partition("://")
    # Split by hand, not urlsplit: an S3 key may hold "?" and "#", and aws s3 cp keeps them.
    bucket, _, object_key = rest.partition("/")
    if scheme != "s3" or not bucket or not object_key:
        raise SpecError(source, at, url, "expected a blob key or an s3://bucket/key URL")
    if storage_url is None:
        expected = (
            "expected a key in the grid's blob store (s3:// URLs are read against [storage]"
            " url by `batchfarm submit`)"
        )
        raise SpecError(source, at, url, expected)
    storage = urlsplit(storage_url)
    if storage.scheme != "s3":
        expected = (
            f"expected a key: the grid's blob store is {storage_url}, not S3 (copy the object"
            " into it, or name a local file in inputs.files)"
        )
        raise SpecError(source, at, url, expected)
    prefix = unquote(storage.path).strip("/")  # as the S3 blob store reads it
    home = f"s3://{storage.netloc}/{prefix + '/' if prefix else ''}"
    if bucket != storage.netloc or not object_key.startswith(prefix + "/" if prefix else ""):
        expected = (
            f"expected an object under {home} (the grid's [storage] url); copy it there"
            f" first: aws s3 cp {url} {home}..."
        )
        raise SpecError(source, at, url, expected)
    return object_key[len(prefix) + 1 :] if prefix else object_key


def upload_inputs(
    spec: JobSpec, blobs: BlobStore, job_id: str, progress: Progress | None = None
) -> list[str]:
    """Upload the spec's files, streamed; return every input key in part order.

    The objects ``inputs.keys`` names are checked first (``head``): a missing one is a
    :class:`SpecError` before any byte is uploaded. ``progress`` gets the bytes done and the
    total after each chunk, and ends with both equal.
    """
    for index, key in enumerate(spec.keys):
        try:
            blobs.head(key)
        except BlobNotFoundError:
            expected = "expected an object in the blob store"
            raise SpecError(spec.source, f"inputs.keys[{index}]", key, expected) from None
    sizes = []
    for item in spec.files:
        try:
            sizes.append(item.path.stat().st_size)
        except OSError as e:
            expected = f"expected the file to be there until it is uploaded ({e.strerror})"
            raise SpecError(spec.source, "inputs.files", str(item.path), expected) from None
    report = progress or (lambda done, total: None)
    total = sum(sizes)
    done = 0
    report(done, total)

    def chunks(path: Path) -> Iterator[bytes]:
        nonlocal done
        with path.open("rb") as f:
            while chunk := f.read(blobs.chunk_size):
                yield chunk
                # Back here once the store has taken the chunk and asks for the next.
                done += len(chunk)
                report(done, max(total, done))

    for item in spec.files:
        # put() with a chunk iterator, not put_file(): progress moves within big files too.
        blobs.put(input_key(job_id, item.name), chunks(item.path))
    if done != total:  # a file changed size while it was read
        report(done, done)
    return input_keys(spec, job_id)
