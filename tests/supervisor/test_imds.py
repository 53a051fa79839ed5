"""The metadata client: IMDSv2 reads, and every way it can fail raised as one error."""

from __future__ import annotations

import pytest

from batchfarm.supervisor.imds import InstanceFacts, MetadataClient, MetadataError, read_instance
from tests.fakes.imds import FakeImds
from tests.ports import free_port


@pytest.fixture
def imds():
    server = FakeImds().start()
    yield server
    server.stop()


def test_reads_with_a_session_token_and_none_where_there_is_nothing(imds):
    client = MetadataClient(imds.url)
    try:
        assert client.get("instance-id") == "i-0123456789abcdef0"
        assert client.get("spot/instance-action") is None
    finally:
        client.close()
    assert [m for m, _, _ in imds.requests] == ["PUT", "GET", "GET"]
    assert all(valid for m, _, valid in imds.requests if m == "GET")


def test_a_service_that_does_not_answer_is_a_metadata_error_naming_the_call():
    # Nothing listens on this port: a connection error, not an HTTP status.
    client = MetadataClient(f"http://127.0.0.1:{free_port()}", timeout_s=1.0)
    try:
        with pytest.raises(MetadataError, match=r"PUT /latest/api/token: .*"):
            client.get("instance-id")
    finally:
        client.close()


def test_a_failing_service_is_a_metadata_error_with_its_status(imds):
    imds.fail = True
    client = MetadataClient(imds.url)
    try:
        with pytest.raises(MetadataError, match="PUT /latest/api/token: HTTP 500"):
            client.get("instance-id")
    finally:
        client.close()


def test_instance_facts_are_empty_when_the_service_is_away(caplog):
    url = f"http://127.0.0.1:{free_port()}"
    assert read_instance(url) == InstanceFacts()
    assert "priced on demand" in caplog.text
