"""Nothing is lost in delay mode: crashes after the lock, a holder killed outright, contention past the
retry limit (a lock taken by the message's own record, and requeues: delay mode's mechanics).

After each, every accepted message is in its conversation exactly once, in a queue, or in a DLQ. In
debounce mode, the default, the same crashes are `bench/chaos.py`'s seeded kill points
(tests/test_chaos.py), and a holder's death in tests/test_answered.py.
"""

from __future__ import annotations

import json
import multiprocessing
import time

import pytest

from replies_engine import clock
from replies_engine.handlers import batch_processor, stalled_sweeper
from replies_engine.local.workers import sqs_event
from replies_engine.ports import QueueError

from .conftest import conversation
from .payloads import twilio_event, whatsapp_text

pytestmark = pytest.mark.delay_mode


@pytest.fixture
def fast(engine):
    engine.env(BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0", REQUEUE_DELAY_SECONDS="0")
    return engine


def post(engine, text):
    params = whatsapp_text(text)
    assert engine.handle(twilio_event("whatsapp", params))["statusCode"] == 200
    return params["MessageSid"]


def occurrences(engine, sid):
    """Where `sid` is: (times in the conversation, times in any queue or DLQ)."""
    in_conversation = [m["message_id"] for m in engine.get()["messages"]].count(sid)
    queues = ("whatsapp", "whatsapp-dlq", "handoff")
    in_queues = sum(1 for q in queues for m in engine.queued(q) if m["body"].get("message_sid") == sid)
    return in_conversation, in_queues


def test_crash_after_the_lock_before_the_ai_send_unlocks_and_the_retry_succeeds(fast, monkeypatch):
    sid = post(fast, "hello")
    real_send = fast.runtime.queue.send

    def ai_down(queue, body, **kwargs):
        if queue == "ai":
            raise QueueError("AI queue unavailable")
        return real_send(queue, body, **kwargs)

    monkeypatch.setattr(fast.runtime.queue, "send", ai_down)
    messages = fast.runtime.queue.receive("whatsapp", visibility_timeout=0)

    result = batch_processor(sqs_event("whatsapp", messages), None)

    assert result == {"batchItemFailures": [{"itemIdentifier": messages[0].message_id}]}
    record = fast.get()
    assert record["conversation_status"] == "processing_error" and "lock_owner" not in record
    assert "AI queue unavailable" in record["last_error"]
    assert occurrences(fast, sid) == (0, 1)  # taken out again: the queue redelivers it

    monkeypatch.setattr(fast.runtime.queue, "send", real_send)
    assert fast.deliver("whatsapp") == 1
    assert fast.deliver("ai") == 1
    assert occurrences(fast, sid) == (1, 0)
    assert fast.get()["conversation_status"] == "ai_response_sent"


def _die_holding_the_lock(db_path: str) -> None:
    """A batch processor that takes the lock and is killed before it hands the batch on."""
    import os

    from replies_engine.bootstrap import get_runtime, reset_runtime
    from replies_engine.handlers import batch_processor

    os.environ["REPLIES_SQLITE_PATH"] = db_path
    reset_runtime()
    runtime = get_runtime()
    runtime.queue.send = lambda queue, *a, **k: os._exit(9) if queue == "ai" else None
    messages = runtime.queue.receive("whatsapp", visibility_timeout=1)
    batch_processor(sqs_event("whatsapp", messages), None)


def kill_a_holder(engine):
    process = multiprocessing.get_context("spawn").Process(
        target=_die_holding_the_lock, args=(engine.runtime.settings.sqlite_path,)
    )
    process.start()
    process.join(60)
    assert process.exitcode == 9
    record = engine.get()
    assert record["conversation_status"] == "processing_reply"
    return record


def test_a_killed_holder_is_recovered_by_lease_expiry(fast):
    fast.env(LOCK_TIMEOUT_SECONDS="1", BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0")
    sid = post(fast, "are you there?")
    dead_batch = kill_a_holder(fast)["lock_owner"]
    time.sleep(1.2)  # the dead holder's lease and its record's visibility timeout both run out
    later = post(fast, "hello??")  # stage 1 no longer refuses: the lease expired

    assert fast.deliver("whatsapp") == 2
    [ai] = fast.queued("ai")
    assert ai["body"]["batch_id"] != dead_batch
    # the dead holder's message was appended already, and is answered with the new one
    assert [m["message_id"] for m in ai["body"]["messages"]] == [sid, later]
    fast.deliver("ai")

    assert occurrences(fast, sid) == (1, 0) and occurrences(fast, later) == (1, 0)
    record = fast.get()
    assert record["conversation_status"] == "ai_response_sent"
    assert record["messages"][-1]["answers"] == [sid, later]
    assert fast.metric("DuplicateMessageDetected") == 1


def test_a_killed_holder_is_recovered_by_the_sweeper(fast):
    fast.env(LOCK_TIMEOUT_SECONDS="1", BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0")
    sid = post(fast, "are you there?")
    kill_a_holder(fast)

    assert stalled_sweeper({}, None) == {"checked": 1, "reset": 0, "redriven": 0}  # within its lease
    time.sleep(1.2)
    assert stalled_sweeper({}, None) == {"checked": 1, "reset": 1, "redriven": 1}

    # the dead holder's unanswered message goes to the AI again, under a new batch
    [ai] = fast.queued("ai")
    assert [m["message_id"] for m in ai["body"]["messages"]] == [sid]
    assert fast.get()["lock_owner"] == ai["body"]["batch_id"]
    assert fast.metric("MessagesRedriven") == 1 and fast.metric("UnansweredAtSweep") == 1
    assert fast.deliver("whatsapp") == 1  # the redelivered record: already appended, acknowledged
    assert fast.deliver("ai") == 1
    record = fast.get()
    assert record["conversation_status"] == "ai_response_sent" and "lock_owner" not in record
    assert [r["body"] for r in fast.outbox()] == ["Thanks, we received your 1 message."]
    assert occurrences(fast, sid) == (1, 0)
    assert stalled_sweeper({}, None) == {"checked": 0, "reset": 0, "redriven": 0}


def test_sweeper_reads_only_locked_conversations(fast):
    fast.env(LOCK_TIMEOUT_SECONDS="60")
    for n in range(30):
        fast.put(conversation(f"idle-{n}"))
    fast.put(
        conversation(
            "stalled",
            conversation_status="processing_reply",
            lock_owner="b1",
            processing_started_at="2026-01-01T00:00:00.000000Z",
        )
    )
    fast.put(
        conversation(
            "busy", conversation_status="processing_reply", lock_owner="b2", processing_started_at=clock.iso()
        )
    )
    fast.put(conversation("broken", conversation_status="processing_reply"))  # no start, no owner

    assert stalled_sweeper({}, None) == {"checked": 3, "reset": 2, "redriven": 0}
    statuses = {c: fast.get(c)["conversation_status"] for c in ("stalled", "busy", "broken")}
    assert statuses == {
        "stalled": "processing_timeout",
        "busy": "processing_reply",
        "broken": "processing_timeout",
    }
    if fast.backend != "sqlite":
        return  # DynamoDB: list_locked is a Query on the sparse gsi-locked index (no Scan in the store)
    plan = " ".join(
        row[-1]
        for row in fast.runtime.store._db.connection().execute(
            "EXPLAIN QUERY PLAN SELECT record FROM conversations INDEXED BY [gsi-locked]"
            " WHERE conversation_status = 'processing_reply'"
        )
    )
    assert "USING INDEX gsi-locked" in plan  # a partial index: it holds the locked rows only


def test_contention_past_max_retries_dead_letters_and_redrive_brings_it_back(fast):
    fast.env(
        MAX_RETRY_ATTEMPTS="1",
        BATCH_DELAY_SECONDS="0",
        BATCH_WINDOW_SECONDS="0",
        REQUEUE_DELAY_SECONDS="0",
        LOCKED_POLICY="defer",
    )
    fast.put(
        conversation(
            conversation_status="processing_reply", lock_owner="someone", processing_started_at=clock.iso()
        )
    )
    sid = post(fast, "please")

    fast.deliver("whatsapp")  # attempt 0 → requeued as RetryAttempt 1
    fast.deliver("whatsapp")  # attempt 1 → past MAX_RETRY_ATTEMPTS: DLQ

    [dead] = fast.queued("whatsapp-dlq")
    assert dead["attributes"]["DeadLetterReason"] == "lock contention after 1 retries"
    assert fast.metric("DeadLettered") == 1 and fast.metric("Requeued") == 1
    assert occurrences(fast, sid) == (0, 1)

    fast.put(conversation())  # the lock is gone
    assert fast.runtime.queue.redrive("whatsapp") == 1
    assert fast.deliver("whatsapp") == 1
    fast.deliver("ai")
    assert occurrences(fast, sid) == (1, 0)
    assert len(fast.outbox()) == 1


def test_every_message_of_a_contended_burst_ends_up_exactly_once(fast):
    """Many messages, a reply stage that lags, retries: at the end each is in the conversation once."""
    fast.env(
        LOCKED_POLICY="defer",
        BATCH_DELAY_SECONDS="0",
        BATCH_WINDOW_SECONDS="0",
        REQUEUE_DELAY_SECONDS="0",
        MAX_RETRY_ATTEMPTS="50",
    )
    sids = []
    for n in range(12):
        sids.append(post(fast, f"message {n}"))
        if n % 3 == 0:
            fast.handle(
                twilio_event("whatsapp", whatsapp_text(f"message {n}", MessageSid=sids[-1]))
            )  # a retry
        fast.deliver("whatsapp", wait_seconds=0)
        if n % 4 == 3:
            fast.deliver("ai", wait_seconds=0)
    deadline = time.monotonic() + 30
    while fast.all_queued() and time.monotonic() < deadline:
        fast.deliver("ai", wait_seconds=0)
        fast.deliver("whatsapp", wait_seconds=0.1)

    assert fast.all_queued() == 0
    assert [occurrences(fast, sid) for sid in sids] == [(1, 0)] * 12
    user_ids = [m["message_id"] for m in fast.get()["messages"] if m["role"] == "user"]
    assert sorted(user_ids) == sorted(sids)
    assert json.dumps(fast.queued("whatsapp-dlq")) == "[]"
