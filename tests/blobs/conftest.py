"""Blob store fixtures: ``blob_store`` runs the contract suite once per backend.

A backend joins by adding a factory to ``FACTORIES``. The S3 ones start (or reuse) their
server through ``request.getfixturevalue``: ``moto`` (tests/conftest.py) and ``seaweedfs``
(here), and give each test a fresh bucket, emptied and removed afterwards.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.backends.blobs.local import LocalBlobStore
from batchfarm.actors.backends.blobs.s3 import S3BlobStore
from batchfarm.actors.settings import StorageSettings
from tests.aws import REGION, aws_credentials, unique_name
from tests.blobs.seaweed import SeaweedServer, start_seaweed

# Small chunks make every contract test cross chunk boundaries with small objects.
LOCAL_CHUNK = 64 * 1024
# S3's smallest part: a multipart upload from 5 MiB on, so objects of a few chunks cross
# part boundaries while the suite moves little data.
S3_CHUNK = 5 * 1024 * 1024


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One ``weed mini`` for the run, with boto3's credential chain pointed at it."""
    with aws_credentials():
        folder = tmp_path_factory.mktemp("seaweedfs")
        server = start_seaweed(folder / "data", folder / "weed.log")
        print(f"\nweed mini ready in {server.started_s:.2f} s")
        try:
            yield server
        finally:
            server.stop()


@functools.cache
def s3_client(endpoint: str) -> Any:
    """A plain boto3 S3 client on ``endpoint``, for what the store never does (buckets)."""
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION)


def make_bucket(request: pytest.FixtureRequest, endpoint: str) -> str:
    """A fresh bucket on ``endpoint``, emptied and deleted when the test ends."""
    s3 = s3_client(endpoint)
    bucket = unique_name("blobs")
    s3.create_bucket(Bucket=bucket)

    def remove() -> None:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            try:
                if keys:
                    s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
            except ClientError:
                # moto cannot put a control character in DeleteObjects' XML: one at a time.
                for key in keys:
                    s3.delete_object(Bucket=bucket, **key)
        uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        for upload in uploads:
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        s3.delete_bucket(Bucket=bucket)

    request.addfinalizer(remove)
    return bucket


def s3_settings(endpoint: str, bucket: str, **overrides: Any) -> StorageSettings:
    """Settings of an S3 store in ``bucket`` under the prefix ``grid``, 5 MiB parts."""
    values: dict[str, Any] = {
        "url": f"s3://{bucket}/grid",
        "endpoint_url": endpoint,
        "region": REGION,
        "chunk_size": S3_CHUNK,
        "multipart_threshold": S3_CHUNK,
        **overrides,
    }
    return StorageSettings(**values)


def _local(tmp_path: Path, request: pytest.FixtureRequest) -> BlobStore:
    return LocalBlobStore(tmp_path / "blobs", chunk_size=LOCAL_CHUNK)


def _s3_on(server_fixture: str) -> Callable[[Path, pytest.FixtureRequest], BlobStore]:
    def factory(tmp_path: Path, request: pytest.FixtureRequest) -> BlobStore:
        endpoint = request.getfixturevalue(server_fixture).endpoint
        return S3BlobStore(s3_settings(endpoint, make_bucket(request, endpoint)))

    return factory


FACTORIES: dict[str, Callable[[Path, pytest.FixtureRequest], BlobStore]] = {
    "local": _local,
    "s3-moto": _s3_on("moto"),
    "s3-seaweedfs": _s3_on("seaweedfs"),
}


@dataclass(frozen=True)
class ListingOrder:
    """How a backend orders its listings: a sort key, and which keys ``after=`` leaves in."""

    sort_key: Callable[[str], Any]
    is_after: Callable[[str, str], bool]


#: S3's documented order, the contract's: UTF-8 byte order (code point order, in Python).
BYTE_ORDER = ListingOrder(lambda key: key.encode("utf-8"), lambda key, after: key > after)


def _segments(key: str) -> list[bytes]:
    return [segment.encode("utf-8") for segment in key.split("/")]


#: SeaweedFS lists folder by folder, as its filer stores keys: segment by segment, so
#: "a/b/c" comes before "a b", and StartAfter "a/b" skips the whole folder "a/b/".
SEAWEED_ORDER = ListingOrder(
    _segments, lambda key, after: _segments(key)[: len(_segments(after))] > _segments(after)
)


@pytest.fixture
def listing_order(request: pytest.FixtureRequest) -> ListingOrder:
    """The listing order of the backend under test (S3's, but for SeaweedFS)."""
    backend = request.node.callspec.params.get("blob_store", "")
    return SEAWEED_ORDER if backend == "s3-seaweedfs" else BYTE_ORDER


@pytest.fixture(params=sorted(FACTORIES))
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    store = FACTORIES[request.param](tmp_path, request)
    try:
        yield store
    finally:
        store.close()
