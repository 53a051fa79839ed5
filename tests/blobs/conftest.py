"""Blob store fixtures: ``blob_store`` runs the contract suite once per backend.

A backend joins by adding a factory to ``FACTORIES``: the S3 one will start (or reuse) a moto
server through ``request.getfixturevalue`` and build an S3 store on it; no test changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.backends.blobs.local import LocalBlobStore

# Small chunks make every contract test cross chunk boundaries with small objects.
LOCAL_CHUNK = 64 * 1024


def _local(tmp_path: Path, request: pytest.FixtureRequest) -> BlobStore:
    return LocalBlobStore(tmp_path / "blobs", chunk_size=LOCAL_CHUNK)


FACTORIES: dict[str, Callable[[Path, pytest.FixtureRequest], BlobStore]] = {"local": _local}


@pytest.fixture(params=sorted(FACTORIES))
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    store = FACTORIES[request.param](tmp_path, request)
    try:
        yield store
    finally:
        store.close()
