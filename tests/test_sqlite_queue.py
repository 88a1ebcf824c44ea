"""The embedded queue has SQS semantics: delay, visibility, receive count, DLQ, redrive, and no message
handed to two receivers at once, across threads and processes."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from replies_engine.adapters.sqlite import Database, SqliteMessageQueue
from replies_engine.ports import OutgoingMessage, QueueError


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "queue.db")


@pytest.fixture
def queue(db_path):
    database = Database(db_path)
    yield SqliteMessageQueue(database, max_receive_count=2)
    database.close()


def test_delay_hides_a_message_until_it_is_due(queue):
    queue.send("whatsapp", "later", delay_seconds=1, attributes={"conversation_id": "c1", "RetryAttempt": 0})

    assert queue.receive("whatsapp") == []
    [message] = queue.receive("whatsapp", wait_seconds=3)

    assert message.body == "later" and message.receive_count == 1
    assert message.attributes == {"conversation_id": "c1", "RetryAttempt": 0}


def test_long_poll_returns_as_soon_as_a_message_arrives(queue):
    threading.Timer(0.3, queue.send, ("sms", "hi")).start()
    started = time.monotonic()

    [message] = queue.receive("sms", wait_seconds=5)

    assert message.body == "hi" and time.monotonic() - started < 2


def test_a_received_message_is_invisible_until_its_timeout_and_then_comes_back(queue):
    queue.send("ai", "x")

    [first] = queue.receive("ai", visibility_timeout=0.5)
    assert queue.receive("ai") == []
    [again] = queue.receive("ai", wait_seconds=2)

    assert again.message_id == first.message_id and again.receive_count == 2
    assert not queue.delete("ai", first.receipt_handle)  # stale: received again since
    assert queue.delete("ai", again.receipt_handle)
    assert queue.peek("ai") == []


def test_change_visibility_to_zero_releases_a_message_at_once(queue):
    queue.send("email", "x")
    [message] = queue.receive("email", visibility_timeout=60)

    assert queue.change_visibility("email", message.receipt_handle, 0)
    assert [m.message_id for m in queue.receive("email")] == [message.message_id]


def test_after_max_receives_a_message_moves_to_the_dlq_and_redrive_brings_it_back(queue):
    queue.send("whatsapp", "poison", attributes={"conversation_id": "c9"})
    for _ in range(2):  # max_receive_count = 2, never deleted
        [message] = queue.receive("whatsapp", visibility_timeout=0)

    assert queue.receive("whatsapp") == []
    [dead] = queue.peek("whatsapp-dlq")
    assert dead.body == "poison" and dead.attributes == {"conversation_id": "c9"}

    assert queue.redrive("whatsapp") == 1
    [back] = queue.receive("whatsapp")
    assert back.message_id == message.message_id and back.receive_count == 1
    assert queue.peek("whatsapp-dlq") == []


def test_receive_returns_at_most_ten_in_order(queue):
    queue.send_batch("sms", [OutgoingMessage(str(i)) for i in range(12)])

    first = queue.receive("sms", max_messages=10)
    rest = queue.receive("sms", max_messages=10)

    assert [m.body for m in first] == [str(i) for i in range(10)]
    assert [m.body for m in rest] == ["10", "11"]


def test_unknown_queue_and_oversized_message_are_refused(queue):
    with pytest.raises(QueueError, match="no queue named"):
        queue.send("fax", "x")
    with pytest.raises(QueueError, match="exceeds"):
        queue.send("sms", "x" * 262_145)
    assert queue.peek("sms") == []


def _drain(path: str, results, barrier) -> None:
    database = Database(path, busy_timeout_ms=10_000)
    queue = SqliteMessageQueue(database)
    barrier.wait()
    got = []
    while batch := queue.receive("whatsapp", max_messages=3, visibility_timeout=300):
        got.extend(m.message_id for m in batch)
        time.sleep(0.005)  # a worker handles what it received before it asks again
    results.put(got)
    database.close()


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_concurrent_receivers_never_share_a_message(db_path, queue, kind):
    sent = set(queue.send_batch("whatsapp", [OutgoingMessage(str(i)) for i in range(200)]))
    workers = 4
    if kind == "threads":
        import queue as stdlib_queue

        results, barrier = stdlib_queue.Queue(), threading.Barrier(workers)
        runners = [threading.Thread(target=_drain, args=(db_path, results, barrier)) for _ in range(workers)]
    else:
        ctx = multiprocessing.get_context("spawn")
        results, barrier = ctx.Queue(), ctx.Barrier(workers)
        runners = [ctx.Process(target=_drain, args=(db_path, results, barrier)) for _ in range(workers)]
    for runner in runners:
        runner.start()
    received = [results.get(timeout=60) for _ in runners]
    for runner in runners:
        runner.join(timeout=60)

    flat = [message_id for got in received for message_id in got]
    assert len(flat) == len(set(flat)) == 200
    assert set(flat) == sent
    assert sum(1 for got in received if got) >= 2  # they really did compete
