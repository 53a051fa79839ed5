"""The AWS blob store: objects in an S3 bucket under a prefix (``s3://bucket/prefix``).

Any S3-compatible server works through ``[storage] endpoint_url``. The bucket must exist:
the grid never creates one (its region, encryption, lifecycle and access policy are the
operator's), and a missing bucket is an error naming it when the store opens.

- ``put`` streams its source through boto3's transfer manager: objects of at least
  ``multipart_threshold`` bytes go up as a multipart upload of ``chunk_size`` parts,
  ``max_concurrency`` at a time, holding about that many parts in memory whatever the
  object's size. S3 makes an object visible only when its upload completes, so readers see
  it whole or not at all; a failed upload is aborted, leaving no parts behind. The SHA-256
  is computed while streaming; S3 also checks each request's SHA-256 checksum on arrival.
- ``get`` is one ranged GET streamed in ``chunk_size`` chunks; a connection that drops
  mid-body is resumed from where it broke, pinned to the same version by its ETag.
- ``get_file`` downloads with the transfer manager: concurrent ranged GETs of one version
  into a temp file that is renamed into place.
- ``head`` reports the SHA-256 from S3's checksum where S3 holds one for the whole object
  (objects uploaded in one part); a multipart object's checksum is a checksum of part
  checksums, so ``sha256`` is None there, as it is in listings (S3 lists no checksums).
- ``url`` is a presigned GET (SigV4, at most 7 days).

Keys are validated before any request: S3 (and moto) accept keys batchfarm refuses.
Throttling and transient errors are retried by botocore's standard mode (see
:mod:`batchfarm.actors.backends.aws`); what retrying cannot fix is a ``BlobError`` naming
the bucket, the prefix, the key and the S3 action.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import unquote, urlsplit

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.subscribers import BaseSubscriber

from batchfarm.actors.backends.aws import backend_error, client, error_code
from batchfarm.actors.backends.blobs import BlobInfo, BlobPage, BlobStore, Source
from batchfarm.actors.backends.blobs.keys import check_key, check_prefix, is_valid_key
from batchfarm.actors.backends.blobs.s3io import BodyStream, SourceReader
from batchfarm.actors.errors import BlobError, BlobNotFoundError
from batchfarm.actors.settings import StorageSettings

#: IAM actions every process using the store needs (config/iam/; a test checks the calls
#: below against them). s3:PutObject covers the multipart calls, s3:ListBucket HeadBucket.
ACTIONS = ("s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload")
#: Deleting objects is the manager's (and the CLI's); nodes only read and write.
MANAGER_ACTIONS = ("s3:DeleteObject",)
#: S3's smallest multipart part (all but the last).
MIN_PART_SIZE = 5 * 1024 * 1024
#: The longest expiry a SigV4 presigned URL may have.
MAX_URL_EXPIRY_S = 7 * 24 * 3600
#: Keys per ListObjectsV2 call (S3's maximum).
_PAGE = 1000
_NOT_FOUND = ("NoSuchKey", "404", "NotFound")


class S3BlobStore(BlobStore):
    """Objects in ``s3://bucket/prefix`` (see the module docstring for the guarantees)."""

    def __init__(self, settings: StorageSettings) -> None:
        parts = urlsplit(settings.url)
        if parts.scheme != "s3" or not parts.netloc:
            raise BlobError(f"storage URL {settings.url!r}: expected s3://bucket/optional/prefix")
        self.bucket = parts.netloc
        prefix = unquote(parts.path).strip("/")
        if prefix and not is_valid_key(prefix):
            raise BlobError(
                f"storage URL {settings.url!r}: the prefix {prefix!r} must obey the key rules "
                "(no empty, '.' or '..' segment, no control character)"
            )
        #: Prepended to every key: "" or a folder ending in "/".
        self.prefix = f"{prefix}/" if prefix else ""
        if settings.chunk_size < MIN_PART_SIZE:
            raise BlobError(
                f"[storage] chunk_size = {settings.chunk_size}: expected at least "
                f"{MIN_PART_SIZE} (5 MiB) for S3, whose multipart parts are never smaller"
            )
        self.chunk_size = settings.chunk_size
        self.endpoint_url = settings.endpoint_url
        self._where = f"s3://{self.bucket}/{self.prefix}"
        self._client = client(
            "s3",
            region=settings.region,
            endpoint_url=settings.endpoint_url,
            # Every transfer thread holds a connection, and so does a caller's open get().
            max_pool_connections=max(10, settings.max_concurrency + 4),
        )
        # botocore presigns with SigV2 in regions that still take it; SigV2 is deprecated
        # (buckets created since June 2020 refuse it): sign URLs with SigV4, as requests are.
        self._client.meta.events.register_first("choose-signer.s3", _presign_with_sigv4)
        try:
            self._check_bucket()
        except BaseException:
            self._client.close()
            raise
        self._threshold = settings.multipart_threshold
        config = TransferConfig(
            multipart_threshold=settings.multipart_threshold,
            multipart_chunksize=settings.chunk_size,
            max_concurrency=settings.max_concurrency,
            preferred_transfer_client="classic",
        )
        # Parts read ahead of the uploads (default 10): bounds a put's memory to about
        # (max_concurrency + 1) parts.
        config.max_in_memory_upload_chunks = settings.max_concurrency
        self._transfers = create_transfer_manager(self._client, config)

    def __repr__(self) -> str:
        return f"S3BlobStore({self._where!r})"

    # -- the interface -----------------------------------------------------------------------

    def put(self, key: str, source: Source) -> BlobInfo:
        """Upload ``source`` under ``key`` (multipart from ``multipart_threshold`` bytes).

        The source is read in the transfer manager's thread; errors it raises propagate
        unchanged, after the upload is aborted.
        """
        check_key(key)
        if (
            isinstance(source, bytes | bytearray | memoryview)
            and memoryview(source).nbytes < self._threshold
        ):
            return self._put_small(key, bytes(source))
        reader = SourceReader(source, self.chunk_size)
        future = self._transfers.upload(
            cast(BinaryIO, reader),  # duck-typed: read, readable, seekable
            self.bucket,
            self._name(key),
            extra_args={"ChecksumAlgorithm": "SHA256"},
        )
        try:
            self._wait(future, key, "upload")
        finally:
            reader.close()
        return BlobInfo(key=key, size=reader.size, sha256=reader.sha256, modified=time.time())

    def _put_small(self, key: str, data: bytes) -> BlobInfo:
        """One PutObject, without the transfer threads: params, manifests, markers."""
        digest = hashlib.sha256(data).digest()
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._name(key),
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(digest).decode("ascii"),
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key, "PutObject") from exc
        return BlobInfo(key=key, size=len(data), sha256=digest.hex(), modified=time.time())

    def get(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Stream bytes ``[start, end)`` of the object: one GET, read ``chunk_size`` at a time.

        The GET is sent before this returns, so a missing key or a bad range raises here.
        ``end`` past the object's end is cut to it; ``end <= start`` streams nothing.
        """
        check_key(key)
        if start < 0 or (end is not None and end < 0):
            raise BlobError(f"blob {key!r}: expected a range of bytes >= 0, not [{start}, {end})")
        if end is not None and end <= start:
            self._check_start(key, start, self.head(key).size)
            return iter(())
        try:
            response = self._get_object(key, start, end)
        except ClientError as exc:
            if error_code(exc) != "InvalidRange":
                raise self._error(exc, key, "GetObject") from exc
            # Past the last byte: S3 refuses a range starting at the end, which is empty here.
            self._check_start(key, start, self.head(key).size)
            return iter(())
        etag = response.get("ETag")
        stop = start + int(response["ContentLength"])

        def reopen(offset: int) -> Any:
            try:
                return self._get_object(key, offset, stop, etag=etag)["Body"]
            except ClientError as exc:
                if error_code(exc) in ("PreconditionFailed", *_NOT_FOUND):
                    raise BlobError(
                        f"blob {key!r} in {self._where}: replaced or deleted while it was "
                        f"being read (at byte {offset:,}); read it again"
                    ) from exc
                raise self._error(exc, key, "GetObject") from exc

        return BodyStream(
            key, response["Body"], start=start, stop=stop, chunk_size=self.chunk_size, reopen=reopen
        )

    def head(self, key: str) -> BlobInfo:
        """The object's size, modification time and, for a one-part object, SHA-256."""
        check_key(key)
        return self._info(key, self._head(key))

    def list(self, prefix: str = "", after: str | None = None, limit: int = 1000) -> BlobPage:
        """Up to ``limit`` objects with keys starting with ``prefix`` and after ``after``.

        Objects under the store's prefix whose names are not valid keys (written by other
        tools) are skipped. ``sha256`` is None: S3 lists no checksums.
        """
        check_prefix(prefix)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        items: builtins.list[BlobInfo] = []
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if after is not None:
            request["StartAfter"] = self.prefix + after
        while True:
            request["MaxKeys"] = min(_PAGE, limit - len(items))
            try:
                response = self._client.list_objects_v2(**request)
            except (ClientError, BotoCoreError) as exc:
                raise self._error(exc, prefix, "ListObjectsV2", what="prefix") from exc
            for entry in response.get("Contents", []):
                key = entry["Key"][len(self.prefix) :]
                if is_valid_key(key):
                    items.append(
                        BlobInfo(
                            key=key,
                            size=int(entry["Size"]),
                            sha256=None,
                            modified=entry["LastModified"].timestamp(),
                        )
                    )
            truncated = bool(response.get("IsTruncated"))
            if not truncated:
                return BlobPage(items=items, next_after=None)
            if len(items) >= limit:
                return BlobPage(items=items, next_after=items[-1].key)
            request.pop("StartAfter", None)
            request["ContinuationToken"] = response["NextContinuationToken"]

    def delete(self, key: str) -> None:
        """Delete the object; S3 reports success for a missing one too."""
        check_key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._name(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key, "DeleteObject") from exc

    def url(self, key: str, expires_s: int = 3600) -> str:
        """A presigned GET URL, valid for ``expires_s`` seconds (1 to 7 days).

        Made without a request: the URL of a missing object is a URL that answers 404.
        """
        check_key(key)
        if not 1 <= expires_s <= MAX_URL_EXPIRY_S:
            raise ValueError(f"expires_s must be 1..{MAX_URL_EXPIRY_S}, not {expires_s}")
        return str(
            self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._name(key)},
                ExpiresIn=expires_s,
            )
        )

    def get_file(self, key: str, path: Path) -> BlobInfo:
        """Download with concurrent ranged GETs of one version, written whole or not at all."""
        check_key(key)
        response = self._head(key)
        known = _KnownObject(int(response["ContentLength"]), response.get("ETag"))
        future = self._transfers.download(
            self.bucket, self._name(key), str(path), subscribers=[known]
        )
        self._wait(future, key, "download")
        return self._info(key, response)

    def close(self) -> None:
        """Stop the transfer threads and close the connections."""
        self._transfers.shutdown()
        self._client.close()

    # -- requests ----------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self.prefix + key

    def _check_bucket(self) -> None:
        """Fail at open, naming the bucket, if it does not exist (HEAD cannot tell later)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if error_code(exc) in ("NoSuchBucket", "404", "NotFound"):
                raise BlobError(
                    f"bucket {self.bucket!r} does not exist"
                    f"{f' at {self.endpoint_url}' if self.endpoint_url else ''} "
                    f"(storage URL {self._where}): create it first; the grid never creates "
                    "buckets"
                ) from exc
            # Anything else (no s3:ListBucket permission, say) is left to the first real call,
            # which names its own action.
        except BotoCoreError as exc:
            raise backend_error(
                exc, action="HeadBucket", resource=f"bucket {self.bucket!r}", kind=BlobError
            ) from exc

    def _head(self, key: str) -> dict[str, Any]:
        try:
            response: dict[str, Any] = self._client.head_object(
                Bucket=self.bucket, Key=self._name(key), ChecksumMode="ENABLED"
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key, "HeadObject") from exc
        return response

    def _get_object(
        self, key: str, start: int, end: int | None, etag: str | None = None
    ) -> dict[str, Any]:
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self._name(key)}
        if start or end is not None:
            request["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if etag is not None:
            request["IfMatch"] = etag
        try:
            response: dict[str, Any] = self._client.get_object(**request)
        except BotoCoreError as exc:
            raise self._error(exc, key, "GetObject") from exc
        return response

    def _check_start(self, key: str, start: int, size: int) -> None:
        if start > size:
            raise BlobError(
                f"blob {key!r}: range starts at byte {start:,}, past the object's end "
                f"({size:,} bytes)"
            )

    def _wait(self, future: Any, key: str, action: str) -> None:
        """Wait for a transfer; S3's errors become BlobErrors, a source's pass unchanged."""
        try:
            future.result()
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key, getattr(exc, "operation_name", action)) from exc
        except BaseException:
            future.cancel()  # an interrupted wait: stop the threads, abort the upload
            raise

    def _info(self, key: str, response: dict[str, Any]) -> BlobInfo:
        return BlobInfo(
            key=key,
            size=int(response["ContentLength"]),
            sha256=_whole_sha256(response),
            modified=response["LastModified"].timestamp(),
        )

    def _error(self, exc: BaseException, key: str, action: str, *, what: str = "key") -> BlobError:
        code = error_code(exc)
        if what == "key" and code in _NOT_FOUND:
            return BlobNotFoundError(f"no blob under key {key!r} in {self._where}")
        resource = f"blob {what} {key!r} in {self._where}"
        if code == "NoSuchBucket":
            resource = f"bucket {self.bucket!r} does not exist ({resource})"
        return backend_error(exc, action=action, resource=resource, kind=BlobError)  # type: ignore[return-value]


class _KnownObject(BaseSubscriber):
    """Tells a download the size and ETag its HEAD found.

    So there is no second HEAD, and every ranged GET asks for that version (``If-Match``):
    an overwrite mid-download fails it instead of mixing two versions in one file.
    """

    def __init__(self, size: int, etag: str | None) -> None:
        self._size = size
        self._etag = etag

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self._size)
        if self._etag is not None:
            future.meta.provide_object_etag(self._etag)


def _whole_sha256(response: dict[str, Any]) -> str | None:
    """The hex SHA-256 of the whole object, if S3's checksum is one (a one-part object)."""
    value = response.get("ChecksumSHA256")
    etag = str(response.get("ETag", ""))
    # A multipart object's checksum covers its parts' checksums, not its bytes (and moto
    # reports one without AWS's "-<parts>" suffix): its ETag's "-<parts>" gives it away.
    if not value or "-" in value or "-" in etag or response.get("ChecksumType") == "COMPOSITE":
        return None
    try:
        digest = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return digest.hex() if len(digest) == 32 else None


def _presign_with_sigv4(signature_version: str, **kwargs: Any) -> str | None:
    """``choose-signer`` hook: presign S3 URLs with SigV4, leave other signing alone."""
    # Only plain SigV4 becomes S3's flavour; v4a (multi-region) and S3 Express keep theirs.
    if signature_version in ("v4-query", "s3v4-query"):
        return "s3v4-query"
    return None
