"""What only the SQS queue has: queue setup, per-entry failures, errors, settings.

Everything runs against ``moto_server`` over HTTP (the session fixture ``moto``); the raw
boto3 client here plays the operator or another SQS user, never a patch.
"""

from __future__ import annotations

import json
import logging
import pickle
import time

import pytest

from batchfarm.actors.backends import TASKS, TASKS_HIGH, open_queue, open_task_queues
from batchfarm.actors.backends.aws import client
from batchfarm.actors.backends.queue import Outgoing
from batchfarm.actors.backends.queue.sqs import SendBatchError, SqsQueue
from batchfarm.actors.errors import QueueError
from batchfarm.actors.settings import load
from tests.aws import REGION, unique_name


@pytest.fixture
def sqs(moto):
    """A raw SQS client on moto, as an operator's tooling would hold."""
    raw = client("sqs", region=REGION, endpoint_url=moto.endpoint)
    yield raw
    raw.close()


@pytest.fixture
def opened():
    """Queues a test opened, closed at the end."""
    queues: list[SqsQueue] = []
    yield queues
    for queue in queues:
        queue.close()


def open_sqs(moto, opened, prefix, name="tasks", max_receives=5):
    queue = SqsQueue(
        prefix, name, max_receives=max_receives, region=REGION, endpoint_url=moto.endpoint
    )
    opened.append(queue)
    return queue


def attributes(sqs, name, *names):
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(names))["Attributes"]


# -- queue setup -----------------------------------------------------------------------------


def test_open_creates_the_queue_and_its_dead_letter_queue_wired_by_redrive(moto, sqs, opened):
    prefix = unique_name("bf")
    queue = open_sqs(moto, opened, prefix, max_receives=3)
    assert queue.sqs_name == f"{prefix}-tasks"
    assert queue.max_receives == 3

    dlq_arn = attributes(sqs, f"{prefix}-tasks-dlq", "QueueArn")["QueueArn"]
    policy = json.loads(attributes(sqs, f"{prefix}-tasks", "RedrivePolicy")["RedrivePolicy"])
    assert policy == {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3}
    # SQS itself dead-letters: after 3 receives the message is in PREFIX-tasks-dlq.
    queue.send("poison")
    for _ in range(3):
        (got,) = queue.receive(visibility_s=30)
        queue.change_visibility(got.receipt, 0)
    assert queue.receive(10) == []
    url = sqs.get_queue_url(QueueName=f"{prefix}-tasks-dlq")["QueueUrl"]
    (dead,) = sqs.receive_message(QueueUrl=url)["Messages"]
    assert dead["Body"] == "poison"


def test_an_existing_queue_is_used_as_it_is_and_its_receive_limit_counts(moto, sqs, opened, caplog):
    prefix = unique_name("bf")
    dlq_url = sqs.create_queue(QueueName=f"{prefix}-tasks-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2})
    sqs.create_queue(QueueName=f"{prefix}-tasks", Attributes={"RedrivePolicy": policy})

    with caplog.at_level(logging.WARNING, logger="batchfarm"):
        queue = open_sqs(moto, opened, prefix, max_receives=5)
    assert queue.max_receives == 2
    assert f"{prefix}-tasks" in caplog.text
    assert "max_receives" in caplog.text
    # Unchanged: infrastructure code owns the queue's attributes.
    assert attributes(sqs, f"{prefix}-tasks", "RedrivePolicy")["RedrivePolicy"] == policy


def test_a_redrive_policy_to_another_queue_is_refused_naming_both(moto, sqs, opened):
    prefix = unique_name("bf")
    sqs.create_queue(QueueName=f"{prefix}-tasks-dlq")
    other_url = sqs.create_queue(QueueName=f"{prefix}-elsewhere")["QueueUrl"]
    other_arn = sqs.get_queue_attributes(QueueUrl=other_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": other_arn, "maxReceiveCount": 5})
    sqs.create_queue(QueueName=f"{prefix}-tasks", Attributes={"RedrivePolicy": policy})

    with pytest.raises(QueueError) as caught:
        open_sqs(moto, opened, prefix)
    message = str(caught.value)
    assert f"SQS queue '{prefix}-tasks'" in message
    assert other_arn in message
    assert f"{prefix}-tasks-dlq" in message


def test_a_name_too_long_for_sqs_is_refused_before_any_call(moto, opened):
    prefix = "p" * 64
    open_sqs(moto, opened, prefix, name="completions").close()  # 64 + 1 + 11 + 4 = 80
    with pytest.raises(QueueError, match="shorter sqs:// prefix") as caught:
        open_sqs(moto, opened, prefix, name="completions2")
    assert f"{prefix}-completions2-dlq" in str(caught.value)


def test_settings_choose_region_and_endpoint_for_open_queue(moto, tmp_path, opened):
    prefix = unique_name("bf")
    config = tmp_path / "grid.toml"
    config.write_text(f'[queue]\nurl = "sqs://{prefix}"\nregion = "eu-west-1"\nmax_receives = 4\n')
    settings = load(config, {"BATCHFARM_QUEUE_ENDPOINT_URL": moto.endpoint}).settings
    assert settings.queue.endpoint_url == moto.endpoint

    tasks = open_task_queues(settings.queue)
    completions = open_queue(settings.queue, "completions")
    try:
        assert tasks.names() == [TASKS_HIGH, TASKS]
        tasks.for_priority(1).send("high")
        assert [m.body for m in tasks.named(TASKS_HIGH).receive()] == ["high"]
        assert completions.max_receives == 4
    finally:
        tasks.close()
        completions.close()

    west = client("sqs", region="eu-west-1", endpoint_url=moto.endpoint)
    east = client("sqs", region=REGION, endpoint_url=moto.endpoint)
    try:
        names = {url.rsplit("/", 1)[1] for url in _queue_urls(west, prefix)}
        assert names == {
            f"{prefix}-{name}{dlq}"
            for name in ("tasks", "tasks-high", "completions")
            for dlq in ("", "-dlq")
        }
        assert _queue_urls(east, prefix) == []
    finally:
        west.close()
        east.close()


def _queue_urls(sqs, prefix):
    return sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])


# -- per-entry failures in batch responses ----------------------------------------------------


def test_a_visibility_batch_reports_entries_sqs_failed_and_applies_the_rest(moto, opened):
    queue = open_sqs(moto, opened, unique_name("bf"))
    queue.send_batch([Outgoing("a"), Outgoing("b")])
    a, b = queue.receive(2, visibility_s=30)
    queue.delete(b.receipt)
    # Well formed, so it reaches SQS, which fails it inside an HTTP 200 response.
    made_up = "AQEB" + "x" * 120
    result = queue.change_visibility_batch([(a.receipt, 0), (b.receipt, 0), (made_up, 0)])
    assert result.ok == (a.receipt,)
    assert result.failed == {b.receipt: "stale", made_up: "stale"}
    (again,) = queue.receive(visibility_s=30)  # a's change applied: visible at once
    assert again.body == "a"


def test_a_delete_batch_reports_entries_sqs_failed_and_applies_the_rest(moto, opened):
    left = open_sqs(moto, opened, unique_name("bf"))
    right = open_sqs(moto, opened, unique_name("bf"))
    left.send("from left")
    right.send("from right")
    (mine,) = left.receive(visibility_s=30)
    (theirs,) = right.receive(visibility_s=30)
    result = left.delete_batch([mine.receipt, theirs.receipt, ""])
    assert result.ok == (mine.receipt,)
    assert result.failed == {theirs.receipt: "stale", "": "invalid"}
    assert left.depth().backlog == 0
    assert right.depth().in_flight == 1


def test_send_entries_sqs_fails_raise_naming_entry_and_code_and_what_was_sent(moto, opened):
    queue = open_sqs(moto, opened, unique_name("bf"))
    # send_batch checks delays before calling SQS; this entry skips that check, so SQS
    # itself answers with a Failed entry (SenderFault) beside a Successful one.
    entries = [
        {"Id": "0", "MessageBody": "fine", "DelaySeconds": 0},
        {"Id": "1", "MessageBody": "too late", "DelaySeconds": 901},
    ]
    with pytest.raises(SendBatchError) as caught:
        queue._send_entries(entries, {})
    message = str(caught.value)
    assert f"SQS queue '{queue.sqs_name}'" in message
    assert "SendMessageBatch" in message
    assert "message 1 failed (InvalidParameterValue" in message
    assert "messages [0] were sent" in message
    assert list(caught.value.sent) == [0]
    (got,) = queue.receive(10)
    assert (got.message_id, got.body) == (caught.value.sent[0], "fine")


def test_a_batch_sqs_refuses_whole_sends_nothing_and_names_queue_and_action(moto, sqs, opened):
    prefix = unique_name("bf")
    sqs.create_queue(QueueName=f"{prefix}-tasks-dlq")
    sqs.create_queue(QueueName=f"{prefix}-tasks", Attributes={"MaximumMessageSize": "1024"})
    queue = open_sqs(moto, opened, prefix, max_receives=None)
    with pytest.raises(QueueError) as caught:
        queue.send_batch([Outgoing("small"), Outgoing("x" * 2000)])
    assert f"SQS queue '{prefix}-tasks': SendMessageBatch failed" in str(caught.value)
    assert queue.depth().backlog == 0


def test_a_large_batch_is_split_over_calls_and_keeps_its_order(moto, opened):
    queue = open_sqs(moto, opened, unique_name("bf"))
    bodies = [str(i) * 100_000 for i in range(5)]  # 500 kB: three calls of up to 256 KiB
    ids = queue.send_batch([Outgoing(b) for b in bodies])
    got = {m.message_id: m.body for m in queue.receive(10, visibility_s=30)}
    assert [got[i] for i in ids] == bodies


# -- whole seconds ---------------------------------------------------------------------------


def test_fractional_delays_round_up_to_whole_seconds(moto, opened):
    queue = open_sqs(moto, opened, unique_name("bf"))
    queue.send("soon", delay_s=0.2)
    assert queue.depth().delayed == 1  # not 0: SQS got DelaySeconds=1
    (got,) = queue.receive(wait_s=3)
    assert got.body == "soon"


# -- errors ----------------------------------------------------------------------------------


def test_a_queue_deleted_under_the_grid_fails_naming_queue_and_action(moto, sqs, opened):
    queue = open_sqs(moto, opened, unique_name("bf"))
    sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=queue.sqs_name)["QueueUrl"])
    start = time.monotonic()
    with pytest.raises(QueueError) as caught:
        queue.send("lost?")
    assert time.monotonic() - start < 5, "a missing queue must not be retried"
    message = str(caught.value)
    assert f"SQS queue '{queue.sqs_name}'" in message
    assert "SendMessageBatch failed" in message
    assert "does not exist" in message
    with pytest.raises(QueueError, match="ReceiveMessage failed"):
        queue.receive()


def test_a_closed_or_pickled_queue_says_so(moto, opened):
    queue = open_sqs(moto, opened, unique_name("bf"))
    with pytest.raises(QueueError, match="open an SqsQueue in each process"):
        pickle.dumps(queue)
    queue.close()
    with pytest.raises(QueueError, match="closed"):
        queue.receive()


def test_credentials_never_appear_in_errors_or_logs(moto, opened, monkeypatch, caplog):
    secret = unique_name("secret-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    prefix = unique_name("bf")
    with caplog.at_level(logging.DEBUG, logger="batchfarm"):
        queue = open_sqs(moto, opened, prefix)
        sqs = client("sqs", region=REGION, endpoint_url=moto.endpoint)
        sqs.delete_queue(QueueUrl=queue.url)
        sqs.close()
        with pytest.raises(QueueError) as caught:
            queue.depth()
    shown = [str(caught.value), repr(queue), caplog.text]
    assert caplog.text, "expected the queue creation to be logged"
    for text in shown:
        assert secret not in text
        assert "testing" not in text  # the access key id of the session's credentials
