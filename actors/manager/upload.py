"""A job's raw inputs: local files found, named as keys, and streamed to the blob store.

A spec's ``inputs.files`` are files, folders (taken whole, recursively) and globs, relative
to the spec's folder. Each file uploads to ``jobs/<job>/input/<name>``, its name being its
path relative to the spec's folder, or, for one outside it, relative to the folder holding
it (for a glob, its folder before the first wildcard). Hidden files in folders and globs
are left out. ``inputs.keys`` name objects already in the store; they are not copied.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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


def check_keys(source: str, keys: Sequence[str]) -> tuple[str, ...]:
    """Blob keys as ``inputs.keys`` gives them: each a valid key, none twice."""
    seen: set[str] = set()
    for index, key in enumerate(keys):
        at = f"inputs.keys[{index}]"
        try:
            check_key(key)
        except BlobKeyError as e:
            raise SpecError(source, at, key, str(e).partition(": ")[2] or str(e)) from None
        if key in seen:
            raise SpecError(source, at, key, "expected each key once")
        seen.add(key)
    return tuple(keys)


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
