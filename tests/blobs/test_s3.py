"""The S3 store beyond the contract, on moto and SeaweedFS: presigned URLs, what S3 accepts
and we refuse, missing buckets and bad credentials, aborted uploads, checksums, flat memory."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from batchfarm.actors.backends import open_blobs
from batchfarm.actors.backends.blobs import DEFAULT_CHUNK_SIZE
from batchfarm.actors.backends.blobs.s3 import S3BlobStore
from batchfarm.actors.errors import BlobError, BlobKeyError, BlobNotFoundError
from batchfarm.actors.settings import StorageSettings
from tests.aws import unique_name
from tests.blobs.conftest import S3_CHUNK, make_bucket, s3_client, s3_settings
from tests.faults.relay import Relay

CHILD = Path(__file__).with_name("blob_child.py")
MiB = 1024 * 1024
SERVERS = ["moto", "seaweedfs"]


@pytest.fixture(params=SERVERS)
def server(request):
    """The endpoint of each S3-compatible server in turn."""
    return request.getfixturevalue(request.param).endpoint


@pytest.fixture
def bucket(request, server):
    return make_bucket(request, server)


@pytest.fixture
def store(server, bucket):
    store = S3BlobStore(s3_settings(server, bucket))
    yield store
    store.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def raw_keys(server: str, bucket: str) -> list[str]:
    """Every key in the bucket, as S3 itself lists them."""
    listed = s3_client(server).list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listed.get("Contents", [])]


# -- opening -----------------------------------------------------------------------------------


def test_open_blobs_opens_s3_urls_and_keys_live_under_the_prefix(server, bucket):
    settings = StorageSettings(url=f"s3://{bucket}/farm/a", endpoint_url=server)
    store = open_blobs(settings)
    try:
        assert isinstance(store, S3BlobStore)
        assert store.chunk_size == settings.chunk_size
        store.put("jobs/j1/x", b"payload")
        assert raw_keys(server, bucket) == ["farm/a/jobs/j1/x"]
        assert [i.key for i in store.iter_list()] == ["jobs/j1/x"]
    finally:
        store.close()


def test_a_missing_bucket_is_an_error_at_open_naming_it(server):
    missing = unique_name("nobucket")
    with pytest.raises(BlobError, match=f"bucket '{missing}' does not exist.*never creates"):
        S3BlobStore(s3_settings(server, missing))
    # The grid did not create it on the way.
    names = [b["Name"] for b in s3_client(server).list_buckets()["Buckets"]]
    assert missing not in names


def test_a_bucket_deleted_after_open_is_named_in_each_error(server, request):
    bucket = unique_name("gone")
    s3_client(server).create_bucket(Bucket=bucket)
    store = S3BlobStore(s3_settings(server, bucket))
    request.addfinalizer(store.close)
    s3_client(server).delete_bucket(Bucket=bucket)
    for action, call in [
        ("PutObject", lambda: store.put("out/a.mp4", b"x")),
        ("CreateMultipartUpload", lambda: store.put("out/a.mp4", iter([b"x" * S3_CHUNK] * 2))),
        ("GetObject", lambda: list(store.get("out/a.mp4"))),
        ("ListObjectsV2", lambda: store.list("out/")),
        ("DeleteObject", lambda: store.delete("out/a.mp4")),
    ]:
        with pytest.raises(BlobError) as caught:
            call()
        message = str(caught.value)
        assert f"bucket '{bucket}' does not exist" in message, message
        assert f"s3://{bucket}/grid/" in message, message
        assert action in message, message
        assert not isinstance(caught.value, BlobNotFoundError)


def test_a_chunk_size_s3_cannot_use_is_refused_naming_the_setting(server, bucket):
    with pytest.raises(BlobError, match=r"\[storage\] chunk_size = 1048576.*5 MiB"):
        S3BlobStore(s3_settings(server, bucket, chunk_size=MiB))


def test_wrong_credentials_name_the_bucket_key_and_action(seaweedfs, request):
    # moto takes any key; SeaweedFS checks signatures, as AWS does. A process of its own:
    # boto3's credential chain is read once per process.
    bucket = make_bucket(request, seaweedfs.endpoint)
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    url = f"s3://{bucket}/grid"
    done = subprocess.run(
        [sys.executable, str(CHILD), "putone", url, "out/a.mp4", str(S3_CHUNK), seaweedfs.endpoint],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    message = json.loads(done.stdout)["error"]  # HeadBucket's 403 at open is no verdict
    assert f"blob key 'out/a.mp4' in s3://{bucket}/grid/: PutObject failed" in message, message
    assert "SignatureDoesNotMatch" in message or "AccessDenied" in message, message
    assert "not-the-secret" not in message


# -- keys --------------------------------------------------------------------------------------

# Keys S3 (and moto) store as they are, which batchfarm refuses: they could not be files.
ACCEPTED_BY_S3 = ["../etc/passwd", "/leading", "a/./b", "a//b", "trailing/", "ctl\x01char"]


@pytest.mark.parametrize("key", ACCEPTED_BY_S3)
def test_keys_s3_accepts_are_refused_before_any_request(store, server, bucket, key, request):
    if request.node.callspec.params["server"] == "moto":
        # moto stores the key as it is (so a request would have stored it) ... (SeaweedFS
        # refuses "." and ".." segments and rewrites "//", "\\" and a leading "/".)
        s3_client(server).put_object(Bucket=bucket, Key=f"probe/{key}", Body=b"x")
        assert raw_keys(server, bucket) == [f"probe/{key}"]
    sent = []
    store._client.meta.events.register("before-send.s3", lambda **kw: sent.append(kw))
    # ... but the store refuses it without sending anything.
    for call in (
        lambda: store.put(key, b"x"),
        lambda: store.put(key, iter([b"x" * S3_CHUNK] * 2)),
        lambda: list(store.get(key)),
        lambda: store.head(key),
        lambda: store.delete(key),
        lambda: store.url(key),
        lambda: store.get_file(key, Path("/nonexistent/never")),
    ):
        with pytest.raises(BlobKeyError, match="bad blob key"):
            call()
    assert sent == []
    assert [k for k in raw_keys(server, bucket) if not k.startswith("probe/")] == []


def test_objects_other_tools_stored_under_bad_keys_are_not_listed(store, server, bucket):
    s3 = s3_client(server)
    # Both servers store these as they are (SeaweedFS rewrites "a//b" and refuses "..").
    for key in ("grid/ok", "grid/ctl\x01x", "grid/trailing/", "outside"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    assert [i.key for i in store.iter_list()] == ["ok"]


# -- uploads -----------------------------------------------------------------------------------


def test_a_failed_multipart_upload_is_aborted_leaving_nothing(store, server, bucket):
    def source():
        yield b"a" * S3_CHUNK
        yield b"b" * S3_CHUNK  # two parts on their way before the failure
        raise RuntimeError("camera unplugged")

    with pytest.raises(RuntimeError, match="camera unplugged"):
        store.put("new/clip.mp4", source())
    uploads = s3_client(server).list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == []
    assert raw_keys(server, bucket) == []


def test_multipart_objects_have_part_etags_and_no_false_checksum(store, server, bucket):
    big = bytes(range(256)) * (S3_CHUNK * 2 // 256 + 1)
    small = b"small object"
    assert store.put("big", big).sha256 == sha(big)  # put hashes what it streams
    assert store.put("small", small).sha256 == sha(small)
    s3 = s3_client(server)
    assert s3.head_object(Bucket=bucket, Key="grid/big")["ETag"].endswith('-3"')
    # One part: S3's checksum is the SHA-256 of the object. Multipart: it is not, so None.
    assert store.head("small").sha256 == sha(small)
    assert store.head("big").sha256 is None
    assert {i.key: i.sha256 for i in store.iter_list()} == {"big": None, "small": None}


def test_get_file_downloads_in_parallel_ranges_into_place(store, tmp_path):
    data = bytes(range(256)) * (S3_CHUNK * 3 // 256) + b"tail"
    store.put("in/clip.mov", iter([data[:S3_CHUNK], data[S3_CHUNK:]]))
    info = store.get_file("in/clip.mov", tmp_path / "clip.mov")
    assert (tmp_path / "clip.mov").read_bytes() == data
    assert info.size == len(data)
    store.put("in/empty", b"")
    assert store.get_file("in/empty", tmp_path / "empty").size == 0
    assert (tmp_path / "empty").read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mov", "empty"]


def test_a_missing_object_leaves_no_file_from_get_file(store, tmp_path):
    with pytest.raises(BlobNotFoundError, match=r"'in/none\.mov' in s3://"):
        store.get_file("in/none.mov", tmp_path / "none.mov")
    assert list(tmp_path.iterdir()) == []


# -- presigned URLs ----------------------------------------------------------------------------


def test_presigned_urls_download_and_take_ranges(store):
    data = bytes(range(256)) * 40
    store.put("media/Café del Mar/01 Intro.mp4", data)
    url = store.url("media/Café del Mar/01 Intro.mp4", expires_s=60)
    assert "X-Amz-Signature=" in url  # SigV4, not the deprecated SigV2
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == data
    ranged = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert (ranged.status_code, ranged.content) == (206, data[100:200])
    assert httpx.get(store.url("media/none.mp4")).status_code == 404


def test_presigned_url_expiry_is_checked(store):
    with pytest.raises(ValueError, match="expires_s"):
        store.url("x", expires_s=0)
    with pytest.raises(ValueError, match="expires_s"):
        store.url("x", expires_s=7 * 24 * 3600 + 1)


@pytest.mark.slow
def test_seaweedfs_refuses_an_expired_or_tampered_url(seaweedfs, request):
    # moto does not check expiry or signature (its presigned URLs work forever); SeaweedFS
    # does, as AWS does.
    bucket = make_bucket(request, seaweedfs.endpoint)
    store = S3BlobStore(s3_settings(seaweedfs.endpoint, bucket))
    request.addfinalizer(store.close)
    store.put("out/result.mp4", b"result")
    # X-Amz-Date has whole seconds: a URL signed at x.9 s for 1 s is stale at x+1.0 s.
    signed = time.time()
    url = store.url("out/result.mp4", expires_s=3)
    assert httpx.get(url).status_code == 200
    tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    assert httpx.get(tampered).status_code == 403
    time.sleep(max(0.0, signed + 4.1 - time.time()))
    assert httpx.get(url).status_code == 403


# -- memory ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_large_put_and_get_keep_memory_flat(server, bucket):
    # The local store's bound (tests/blobs/test_local.py), with default chunks and
    # concurrency; 256 MiB is 4x the bound and keeps the test within seconds on moto.
    size = 256 * MiB
    done = subprocess.run(
        [
            sys.executable,
            str(CHILD),
            "bigio",
            f"s3://{bucket}/grid",
            *map(str, (size, DEFAULT_CHUNK_SIZE)),
            server,
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    print(f"\n256 MiB put+get on S3: {json.dumps(result)}")
    assert result["size"] == result["received"] == size
    assert result["sent_sha256"] == result["put_sha256"] == result["got_sha256"]
    assert result["head_sha256"] is None  # multipart: S3 holds no whole-object SHA-256
    assert result["growth"] < 4 * DEFAULT_CHUNK_SIZE + 32 * MiB, result


# -- a connection cut mid-body -----------------------------------------------------------------


@pytest.fixture
def relayed(moto, request):
    """A store on moto through a relay that can cut a response mid-body."""
    relay = Relay("127.0.0.1", int(moto.endpoint.rsplit(":", 1)[1])).start()
    store = S3BlobStore(s3_settings(relay.endpoint, make_bucket(request, moto.endpoint)))
    yield store, relay
    store.close()
    relay.close()


def test_a_read_cut_mid_body_resumes_where_it_broke(relayed):
    store, relay = relayed
    data = bytes(range(256)) * (S3_CHUNK * 3 // 256)
    store.put("in/clip.mov", iter([data[:S3_CHUNK], data[S3_CHUNK:]]))
    relay.cut_after(S3_CHUNK + 64 * 1024)  # the headers and the first chunk, then mid-chunk
    chunks = list(store.get("in/clip.mov"))
    assert relay.counts.cut_mid_response == 1
    assert b"".join(chunks) == data
    assert all(len(c) <= S3_CHUNK for c in chunks)


def test_an_object_replaced_during_a_cut_read_is_an_error_not_a_mix(relayed):
    store, relay = relayed
    old = b"o" * (S3_CHUNK * 2)
    store.put("in/clip.mov", old)
    relay.cut_after(S3_CHUNK + 64 * 1024)
    stream = store.get("in/clip.mov")
    got = [next(stream)]
    store.put("in/clip.mov", b"n" * (S3_CHUNK * 2))
    with pytest.raises(BlobError, match=r"'in/clip\.mov'.*replaced or deleted while it was being"):
        got.extend(stream)  # the bytes before the cut, then the error
    assert relay.counts.cut_mid_response == 1
    assert set(b"".join(got)) == {ord("o")}
