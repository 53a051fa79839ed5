"""The SQS queue under an IAM policy: what it may not do fails at once, naming queue and action.

A ``moto_server`` of its own runs in auth mode (``INITIAL_NO_AUTH_ACTION_COUNT``): the first
few calls create two IAM users, after which every call is signed and checked against the
caller's policy, as on AWS.
"""

from __future__ import annotations

import json
import time

import pytest

from batchfarm.actors.backends.aws import client
from batchfarm.actors.backends.queue.sqs import SqsQueue
from batchfarm.actors.errors import QueueError
from tests.aws import CREDENTIALS, REGION, start_moto, unique_name

#: What a worker node needs on its queues (the README's node policy, for these names).
#: On AWS, sqs:SendMessage, sqs:DeleteMessage and sqs:ChangeMessageVisibility also grant
#: their batch calls, and no batch action can be named; moto checks the batch names.
NODE_ACTIONS = [
    "sqs:GetQueueUrl",
    "sqs:GetQueueAttributes",
    "sqs:SendMessage",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:SendMessageBatch",
    "sqs:DeleteMessageBatch",
    "sqs:ChangeMessageVisibilityBatch",
]
# Unauthenticated calls before auth starts: per user create_user, put_user_policy and
# create_access_key.
SETUP_CALLS = 6


@pytest.fixture
def iam_moto(tmp_path, monkeypatch):
    """A moto_server that checks IAM, and the keys of an admin and of a node-like user."""
    for name, value in CREDENTIALS.items():  # moto takes any key for the setup calls
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", str(SETUP_CALLS))
    server = start_moto(tmp_path / "moto-iam.log")
    monkeypatch.delenv("INITIAL_NO_AUTH_ACTION_COUNT")
    try:
        iam = client("iam", region=REGION, endpoint_url=server.endpoint)
        keys = {}
        for user, actions in (("admin", ["sqs:*"]), ("node", NODE_ACTIONS)):
            iam.create_user(UserName=user)
            policy = {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
            }
            iam.put_user_policy(
                UserName=user, PolicyName="queues", PolicyDocument=json.dumps(policy)
            )
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        iam.close()
        yield server, keys
    finally:
        server.stop()


def as_user(monkeypatch, keys, user):
    key_id, secret = keys[user]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    return secret


@pytest.mark.slow
def test_a_node_without_create_queue_gets_a_clear_error_then_works_once_created(
    iam_moto, monkeypatch
):
    server, keys = iam_moto
    prefix = unique_name("bf")

    secret = as_user(monkeypatch, keys, "node")
    start = time.monotonic()
    with pytest.raises(QueueError) as caught:
        SqsQueue(prefix, "tasks", region=REGION, endpoint_url=server.endpoint)
    assert time.monotonic() - start < 10, "a denied call must not be retried"
    message = str(caught.value)
    assert f"SQS queue '{prefix}-tasks-dlq' does not exist, and CreateQueue failed" in message
    assert "AccessDenied" in message
    assert "allow sqs:CreateQueue" in message
    assert secret not in message

    as_user(monkeypatch, keys, "admin")
    SqsQueue(prefix, "tasks", region=REGION, endpoint_url=server.endpoint).close()

    as_user(monkeypatch, keys, "node")
    with SqsQueue(prefix, "tasks", region=REGION, endpoint_url=server.endpoint) as queue:
        queue.send("work")
        (got,) = queue.receive(visibility_s=30)
        queue.change_visibility(got.receipt, 60)
        queue.delete(got.receipt)
        assert queue.depth().backlog == 0
        with pytest.raises(QueueError) as denied:
            queue.purge()
    message = str(denied.value)
    assert f"SQS queue '{prefix}-tasks': PurgeQueue failed" in message
    assert "AccessDenied" in message
    assert keys["node"][1] not in message
