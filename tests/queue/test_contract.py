"""The task-queue contract: every backend gives SQS's answers to the same calls.

Timeouts are whole seconds where expiry matters (SQS counts visibility and delay in whole
seconds), and bounds on elapsed time are generous: the CI machine is loaded.
"""

from __future__ import annotations

import threading
import time

import pytest

from batchfarm.actors.backends.queue import (
    MAX_BATCH,
    MAX_BODY_BYTES,
    MAX_DELAY_S,
    MAX_VISIBILITY_S,
    MAX_WAIT_S,
    Outgoing,
    QueueDepth,
    TaskQueue,
)
from batchfarm.actors.errors import QueueError, StaleReceiptError

#: A visibility timeout or delay short enough for a fast suite, long enough to observe.
SHORT_S = 1.0
#: How long past SHORT_S to sleep before expecting the message back.
SETTLE_S = 0.4


def bodies(queue: TaskQueue, max_messages: int = MAX_BATCH) -> list[str]:
    return sorted(m.body for m in queue.receive(max_messages))


def depth(visible: int = 0, in_flight: int = 0, delayed: int = 0, dead: int = 0) -> QueueDepth:
    return QueueDepth(visible=visible, in_flight=in_flight, delayed=delayed, dead=dead)


# -- sending and receiving -------------------------------------------------------------------


def test_send_then_receive_returns_bodies_ids_and_first_count(queue_factory):
    queue = queue_factory()
    before = time.time()
    ids = queue.send_batch([Outgoing(f"task-{i}") for i in range(MAX_BATCH)])
    assert len(set(ids)) == MAX_BATCH

    got = queue.receive(MAX_BATCH, visibility_s=30)
    assert sorted(m.body for m in got) == sorted(f"task-{i}" for i in range(MAX_BATCH))
    assert {m.message_id for m in got} == set(ids)
    assert {m.receive_count for m in got} == {1}
    assert len({m.receipt for m in got}) == MAX_BATCH
    for message in got:
        assert before - 1 <= message.sent_at <= time.time() + 1


def test_receive_takes_at_most_max_messages(queue_factory):
    queue = queue_factory()
    queue.send_batch([Outgoing(str(i)) for i in range(7)])
    first = queue.receive(3)
    assert len(first) == 3
    rest = queue.receive(MAX_BATCH)
    assert len(rest) == 4
    assert not {m.message_id for m in first} & {m.message_id for m in rest}


def test_bodies_round_trip_exactly(queue_factory):
    queue = queue_factory()
    texts = ["", "tab\tnew\nline\rreturn", "ünïcödé ✓ 𝄞", "x" * MAX_BODY_BYTES]
    queue.send_batch([Outgoing(t) for t in texts])
    assert sorted(m.body for m in queue.receive(MAX_BATCH)) == sorted(texts)


def test_single_message_conveniences(queue_factory):
    queue = queue_factory()
    message_id = queue.send("one")
    (got,) = queue.receive(wait_s=0)
    assert got.message_id == message_id
    queue.change_visibility(got.receipt, 0)
    (again,) = queue.receive()
    queue.delete(again.receipt)
    assert queue.depth() == depth()


def test_a_send_that_need_not_be_durable_delivers_as_any_send(queue_factory):
    queue = queue_factory()
    fast = queue.send_batch([Outgoing(f"fast-{i}") for i in range(3)], durable=False)
    one = queue.send("one", durable=False)
    slow = queue.send_batch([Outgoing("slow")])  # durable, as by default
    got = queue.receive(MAX_BATCH)
    assert {m.message_id: m.body for m in got} == {
        **{message_id: f"fast-{i}" for i, message_id in enumerate(fast)},
        one: "one",
        slow[0]: "slow",
    }
    assert queue.delete_batch([m.receipt for m in got]).failed == {}
    assert queue.depth() == depth()


def test_send_all_sends_any_number_and_returns_their_ids_in_order(queue_factory):
    queue = queue_factory()
    count = 2 * MAX_BATCH + 3
    ids = queue.send_all([Outgoing(f"m-{i}") for i in range(count)])
    assert len(set(ids)) == count
    got = []
    for _ in range(10):  # a receive may return fewer than are waiting
        got += queue.receive(MAX_BATCH, wait_s=1)
        if len(got) >= count:
            break
    assert {m.message_id: m.body for m in got} == {ids[i]: f"m-{i}" for i in range(count)}
    assert queue.send_all([]) == []


def test_queues_with_different_names_are_separate(queue_factory):
    left, right = queue_factory("left"), queue_factory("right")
    left.send("for left")
    assert right.receive(MAX_BATCH) == []
    assert right.depth() == depth()
    assert bodies(left) == ["for left"]


def test_two_handles_on_one_queue_share_it(queue_factory):
    one, two = queue_factory("shared"), queue_factory("shared")
    one.send_batch([Outgoing("a"), Outgoing("b")])
    taken = two.receive(1, visibility_s=30)
    assert len(taken) == 1
    rest = one.receive(MAX_BATCH, visibility_s=30)
    assert [m.body for m in rest] == [b for b in ("a", "b") if b != taken[0].body]
    assert two.receive(MAX_BATCH) == []


# -- limits and validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch",
    [
        [],
        [Outgoing("x")] * (MAX_BATCH + 1),
        [Outgoing("ok"), Outgoing("x" * (MAX_BODY_BYTES + 1))],
        [Outgoing("ok"), Outgoing("bell \x07")],
        [Outgoing("ok"), Outgoing("late", delay_s=MAX_DELAY_S + 1)],
        [Outgoing("ok"), Outgoing("early", delay_s=-1)],
    ],
    ids=["empty", "eleven", "too-large", "control-char", "delay-too-long", "negative-delay"],
)
def test_a_bad_batch_is_refused_whole(queue_factory, batch):
    queue = queue_factory()
    with pytest.raises(QueueError, match="send_batch"):
        queue.send_batch(batch)
    assert queue.depth() == depth()
    assert queue.receive(MAX_BATCH) == []


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"max_messages": 0}, "max_messages"),
        ({"max_messages": MAX_BATCH + 1}, "max_messages"),
        ({"wait_s": -1}, "wait_s"),
        ({"wait_s": MAX_WAIT_S + 1}, "wait_s"),
        ({"visibility_s": -1}, "visibility"),
        ({"visibility_s": MAX_VISIBILITY_S + 1}, "visibility"),
    ],
)
def test_receive_refuses_arguments_out_of_range(queue_factory, kwargs, word):
    queue = queue_factory()
    with pytest.raises(QueueError, match=word):
        queue.receive(**kwargs)


def test_delete_and_visibility_batches_are_limited(queue_factory):
    queue = queue_factory()
    queue.send("x")
    (got,) = queue.receive(visibility_s=30)
    with pytest.raises(QueueError, match="delete_batch"):
        queue.delete_batch([])
    with pytest.raises(QueueError, match="delete_batch"):
        queue.delete_batch([f"bad-{i}" for i in range(MAX_BATCH + 1)])
    with pytest.raises(QueueError, match="change_visibility_batch"):
        queue.change_visibility_batch([])
    with pytest.raises(QueueError, match="visibility"):
        queue.change_visibility_batch([(got.receipt, MAX_VISIBILITY_S + 1)])
    with pytest.raises(QueueError, match="visibility"):
        queue.change_visibility_batch([(got.receipt, -1)])
    assert queue.depth() == depth(in_flight=1)


def test_bad_queue_names_are_refused(queue_factory):
    for name in ["", "has space", "slash/no", "x" * 77]:
        with pytest.raises(QueueError, match="queue name"):
            queue_factory(name)


# -- delay and visibility --------------------------------------------------------------------


def test_a_delayed_message_waits_its_delay(queue_factory):
    queue = queue_factory()
    queue.send_batch([Outgoing("later", delay_s=SHORT_S), Outgoing("now")])
    assert queue.depth() == depth(visible=1, delayed=1)
    assert bodies(queue) == ["now"]
    assert queue.receive(MAX_BATCH) == []
    time.sleep(SHORT_S + SETTLE_S)
    (later,) = queue.receive(MAX_BATCH)
    assert later.body == "later"
    assert later.receive_count == 1


def test_an_unfinished_message_reappears_with_count_plus_one(queue_factory):
    queue = queue_factory()
    queue.send("work")
    (first,) = queue.receive(visibility_s=SHORT_S)
    assert queue.depth() == depth(in_flight=1)
    assert queue.receive(MAX_BATCH) == []
    time.sleep(SHORT_S + SETTLE_S)
    assert queue.depth() == depth(visible=1)
    (second,) = queue.receive(visibility_s=30)
    assert second.message_id == first.message_id
    assert second.receive_count == 2
    assert second.receipt != first.receipt


def test_change_visibility_to_zero_hands_the_message_back(queue_factory):
    queue = queue_factory()
    queue.send("work")
    (first,) = queue.receive(visibility_s=30)
    result = queue.change_visibility_batch([(first.receipt, 0)])
    assert result.ok == (first.receipt,)
    assert result.failed == {}
    assert queue.depth() == depth(visible=1)
    (again,) = queue.receive(visibility_s=30)
    assert again.message_id == first.message_id
    assert again.receive_count == 2


def test_change_visibility_extends_the_hiding(queue_factory):
    queue = queue_factory()
    queue.send("long job")
    (got,) = queue.receive(visibility_s=SHORT_S)
    queue.change_visibility(got.receipt, 3 * SHORT_S)
    time.sleep(SHORT_S + SETTLE_S)
    assert queue.receive(MAX_BATCH) == []
    assert queue.depth() == depth(in_flight=1)
    queue.delete(got.receipt)  # the receipt still holds the message
    assert queue.depth() == depth()


# -- receipts --------------------------------------------------------------------------------


def test_a_receipt_goes_stale_when_the_message_is_received_again(queue_factory):
    queue = queue_factory()
    queue.send("work")
    (old,) = queue.receive(visibility_s=SHORT_S)
    time.sleep(SHORT_S + SETTLE_S)
    (new,) = queue.receive(visibility_s=30)

    if not queue_factory.detects_stale_receipts:
        # SQS (AWS documents it for DeleteMessage): through an old receipt "the request will
        # succeed, but the message might not be deleted" (moto deletes it). What holds: the
        # old receipt is reported, never raises anything else, and the newest receipt
        # settles the message whatever the old one did.
        stale_delete = queue.delete_batch([old.receipt])
        assert set(stale_delete.ok) | set(stale_delete.failed) == {old.receipt}
        assert set(stale_delete.failed.values()) <= {"stale"}
        assert queue.delete_batch([new.receipt]).ok == (new.receipt,)
        assert queue.depth() == depth()
        return

    stale_delete = queue.delete_batch([old.receipt])
    assert stale_delete.ok == ()
    assert stale_delete.failed == {old.receipt: "stale"}
    stale_change = queue.change_visibility_batch([(old.receipt, 0)])
    assert stale_change.failed == {old.receipt: "stale"}
    with pytest.raises(StaleReceiptError):
        queue.delete(old.receipt)
    with pytest.raises(StaleReceiptError):
        queue.change_visibility(old.receipt, 0)
    # Nothing stale was applied: the message is still held by the new receipt.
    assert queue.depth() == depth(in_flight=1)
    assert queue.delete_batch([new.receipt]).ok == (new.receipt,)
    assert queue.depth() == depth()


def test_a_receipt_goes_stale_when_the_message_is_deleted(queue_factory):
    queue = queue_factory()
    queue.send("work")
    (got,) = queue.receive(visibility_s=30)
    assert queue.delete_batch([got.receipt]).ok == (got.receipt,)
    again = queue.delete_batch([got.receipt])
    if queue_factory.detects_stale_receipts:
        assert again.failed == {got.receipt: "stale"}
    else:
        # SQS: deleting through an old receipt "will succeed" (AWS); it may say either.
        assert set(again.ok) | set(again.failed) == {got.receipt}
    # No backend can make a deleted message visible: the change is reported, not applied.
    change = queue.change_visibility_batch([(got.receipt, 0)])
    assert change.ok == ()
    assert change.failed == {got.receipt: "stale"}
    assert queue.depth() == depth()


def test_a_batch_reports_each_receipt(queue_factory):
    queue = queue_factory()
    queue.send_batch([Outgoing("a"), Outgoing("b"), Outgoing("c")])
    a, b, c = queue.receive(3, visibility_s=30)
    queue.delete(b.receipt)
    result = queue.delete_batch([a.receipt, b.receipt, "not a receipt", c.receipt])
    if not queue_factory.detects_stale_receipts:
        # SQS: b's second delete "will succeed" (AWS), so it may be reported either way.
        assert a.receipt in result.ok
        assert c.receipt in result.ok
        assert result.failed.get(b.receipt, "stale") == "stale"
        assert result.failed["not a receipt"] == "invalid"
    else:
        assert result.ok == (a.receipt, c.receipt)
        assert result.failed == {b.receipt: "stale", "not a receipt": "invalid"}
    with pytest.raises(StaleReceiptError):
        result.raise_for_failures()
    assert queue.depth() == depth()


def test_a_receipt_from_another_queue_does_not_apply(queue_factory):
    left, right = queue_factory("left"), queue_factory("right")
    left.send("x")
    (got,) = left.receive(visibility_s=30)
    assert right.delete_batch([got.receipt]).ok == ()
    assert left.depth() == depth(in_flight=1)


# -- dead letters ----------------------------------------------------------------------------


def test_a_message_received_max_receives_times_goes_to_the_dead_letter_queue(queue_factory):
    queue = queue_factory("poison", max_receives=2)
    message_id = queue.send("bad input")
    receipts = []
    for expected_count in (1, 2):
        (got,) = queue.receive(visibility_s=30)
        assert got.receive_count == expected_count
        receipts.append(got.receipt)
        queue.change_visibility(got.receipt, 0)

    assert queue.receive(MAX_BATCH) == []  # the third receive moves it instead
    assert queue.depth() == depth(dead=1)
    late_delete = queue.delete_batch(receipts[-1:])
    if queue_factory.detects_stale_receipts:
        assert late_delete.failed == {receipts[-1]: "stale"}
    # On every backend the last receipt leaves the dead-lettered copy alone (checked below).

    dlq = queue_factory.dead_letters(queue)
    assert dlq.max_receives is None
    assert dlq.depth() == depth(visible=1)
    (dead,) = dlq.receive(visibility_s=30)
    assert (dead.message_id, dead.body) == (message_id, "bad input")
    assert dead.receive_count == 3
    dlq.delete(dead.receipt)
    assert queue.depth() == depth()


def test_dead_lettering_skips_to_the_next_good_message(queue_factory):
    queue = queue_factory("mixed", max_receives=1)
    queue.send("poison")
    (first,) = queue.receive(visibility_s=30)
    queue.change_visibility(first.receipt, 0)
    queue.send("fresh")
    assert bodies(queue) == ["fresh"]
    assert queue.depth() == depth(in_flight=1, dead=1)


def test_without_max_receives_a_message_is_never_dead_lettered(queue_factory):
    queue = queue_factory("forever", max_receives=None)
    queue.send("again and again")
    for expected_count in range(1, 8):
        (got,) = queue.receive(visibility_s=30)
        assert got.receive_count == expected_count
        queue.change_visibility(got.receipt, 0)
    assert queue.depth() == depth(visible=1)


# -- depth and purge -------------------------------------------------------------------------


def test_depth_counts_each_state(queue_factory):
    queue = queue_factory("states", max_receives=1)
    queue.send_batch([Outgoing("a"), Outgoing("b"), Outgoing("c"), Outgoing("d", delay_s=60)])
    assert queue.depth() == depth(visible=3, delayed=1)
    taken = queue.receive(2, visibility_s=30)
    assert queue.depth() == depth(visible=1, in_flight=2, delayed=1)
    assert queue.depth().backlog == 4
    for message in taken:
        queue.change_visibility(message.receipt, 0)
    assert queue.depth() == depth(visible=3, delayed=1)
    rest = queue.receive(MAX_BATCH, visibility_s=30)  # moves the two, takes the third
    assert len(rest) == 1
    assert queue.depth() == depth(in_flight=1, delayed=1, dead=2)


def test_purge_empties_the_queue_but_not_its_dead_letters(queue_factory):
    queue = queue_factory("purged", max_receives=1)
    queue.send("dies")
    (dying,) = queue.receive(visibility_s=30)
    queue.change_visibility(dying.receipt, 0)
    queue.send_batch([Outgoing("a"), Outgoing("b", delay_s=60)])
    assert bodies(queue) == ["a"]  # and "dies" goes to the dead-letter queue
    queue.send("c")
    assert queue.depth() == depth(visible=1, in_flight=1, delayed=1, dead=1)
    queue.purge()
    assert queue.depth() == depth(dead=1)
    assert queue.receive(MAX_BATCH) == []


# -- long polling ----------------------------------------------------------------------------


def test_a_long_poll_returns_when_a_message_arrives(queue_factory):
    waiter, sender = queue_factory("poll"), queue_factory("poll")
    timer = threading.Timer(0.3, sender.send, args=("wake up",))
    start = time.monotonic()
    timer.start()
    try:
        got = waiter.receive(wait_s=5)
    finally:
        timer.join()
    elapsed = time.monotonic() - start
    assert [m.body for m in got] == ["wake up"]
    assert 0.25 <= elapsed < 2.5


def test_a_long_poll_on_a_shared_handle_sees_sends_through_it(queue_factory):
    queue = queue_factory("poll")
    timer = threading.Timer(0.3, queue.send, args=("same handle",))
    start = time.monotonic()
    timer.start()
    try:
        got = queue.receive(wait_s=5)
    finally:
        timer.join()
    assert [m.body for m in got] == ["same handle"]
    assert time.monotonic() - start < 2.5


def test_a_long_poll_returns_when_a_delayed_message_comes_due(queue_factory):
    queue = queue_factory()
    queue.send("later", delay_s=SHORT_S)
    start = time.monotonic()
    got = queue.receive(wait_s=5)
    elapsed = time.monotonic() - start
    assert [m.body for m in got] == ["later"]
    assert SHORT_S - 0.1 <= elapsed < SHORT_S + 1.5


def test_a_long_poll_returns_when_a_hidden_message_reappears(queue_factory):
    queue = queue_factory()
    queue.send("retry me")
    queue.receive(visibility_s=SHORT_S)
    start = time.monotonic()
    (got,) = queue.receive(wait_s=5)
    assert got.receive_count == 2
    assert time.monotonic() - start < SHORT_S + 1.5


def test_a_long_poll_on_an_empty_queue_returns_nothing_after_the_wait(queue_factory):
    queue = queue_factory()
    start = time.monotonic()
    assert queue.receive(MAX_BATCH, wait_s=1) == []
    assert 0.95 <= time.monotonic() - start < 3.0


def test_a_long_poll_ignores_other_queues(queue_factory):
    waiter, other = queue_factory("quiet"), queue_factory("busy")
    timer = threading.Timer(0.2, other.send, args=("not for you",))
    timer.start()
    start = time.monotonic()
    try:
        assert waiter.receive(wait_s=1) == []
    finally:
        timer.join()
    assert time.monotonic() - start >= 0.95
    assert other.depth() == depth(visible=1)
