"""Stage 2 and 3 on the embedded engine: bursts become one batch and one reply, races have one winner,
duplicates are appended once. Messages enter through `webhook_handler` and leave through the real
queue, the local worker and the Lambda handlers."""

from __future__ import annotations

import json
import multiprocessing
import threading

import pytest

from replies_engine import clock
from replies_engine.handlers import batch_processor, reply_sender
from replies_engine.local.workers import sqs_event

from .conftest import conversation
from .payloads import COMPANY, PERSON, twilio_event, whatsapp_text


@pytest.fixture
def fast(engine):
    """A one-second batching window, so that tests wait for it."""
    engine.env(
        BATCHING_MODE="delay", BATCH_DELAY_SECONDS="1", REQUEUE_DELAY_SECONDS="15", BATCH_WINDOW_SECONDS="0.3"
    )
    return engine


def post(engine, *texts, **overrides):
    sids = []
    for text in texts:
        params = whatsapp_text(text, **overrides)
        assert engine.handle(twilio_event("whatsapp", params))["statusCode"] == 200
        sids.append(params["MessageSid"])
    return sids


def test_a_burst_becomes_one_batch_one_ai_context_one_reply(fast):
    sids = post(fast, "hi", "I wanted to ask", "can I move my appointment?")

    assert fast.deliver("whatsapp") == 3
    [ai] = fast.queued("ai")
    assert ai["body"]["conversation_id"] == "c1"
    assert [m["content"] for m in ai["body"]["messages"]] == [
        "hi",
        "I wanted to ask",
        "can I move my appointment?",
    ]
    assert [m["content"] for m in ai["body"]["history"]] == ["Hi Zoë, how can we help?"]
    assert ai["body"]["reply_address"] == {"from": f"whatsapp:{COMPANY}", "to": f"whatsapp:{PERSON}"}
    assert fast.get()["conversation_status"] == "processing_reply"

    assert fast.deliver("ai") == 1
    [reply] = fast.outbox()
    assert reply["body"] == "Thanks, we received your 3 messages."
    assert (reply["to"], reply["from"], reply["channel_type"]) == (
        f"whatsapp:{PERSON}",
        f"whatsapp:{COMPANY}",
        "whatsapp",
    )

    record = fast.get()
    assert record["conversation_status"] == "ai_response_sent" and "lock_owner" not in record
    assert [m["message_id"] for m in record["messages"][1:4]] == sids
    assert [m["role"] for m in record["messages"]] == ["assistant", "user", "user", "user", "assistant"]
    batch_ids = {m["batch_id"] for m in record["messages"][1:]}
    assert batch_ids == {ai["body"]["batch_id"]}
    assert fast.all_queued() == 0
    assert fast.metric("BatchSize") == 3 and fast.metric("EndToEndSeconds") > 0


def test_records_are_ordered_by_received_at_whatever_the_queue_order(fast):
    post(fast, "first", "second", "third")
    messages = list(reversed(fast.runtime.queue.receive("whatsapp", wait_seconds=3)))

    result = batch_processor(sqs_event("whatsapp", messages), None)

    assert result == {"batchItemFailures": []}
    assert [m["content"] for m in fast.queued("ai")[0]["body"]["messages"]] == ["first", "second", "third"]


def test_one_sqs_batch_with_two_conversations_makes_two_batches(fast):
    fast.put(conversation("c2", gsi_recipient_tel="+4917000000000"))
    post(fast, "from Zoë")
    post(fast, "from Ben", From="whatsapp:+4917000000000", WaId="4917000000000")

    assert fast.deliver("whatsapp") == 2
    by_conversation = {q["body"]["conversation_id"]: q["body"] for q in fast.queued("ai")}
    assert set(by_conversation) == {"c1", "c2"}
    assert by_conversation["c1"]["batch_id"] != by_conversation["c2"]["batch_id"]


def test_a_message_arriving_while_locked_is_requeued_with_retry_attempt_1_and_the_growing_delay(fast):
    post(fast, "first")
    fast.deliver("whatsapp")  # locked until the reply stage runs
    fast.env(LOCKED_POLICY="defer")  # so stage 1 queues it instead of refusing
    post(fast, "second")

    assert fast.deliver("whatsapp") == 1

    [requeued] = fast.queued("whatsapp")
    assert requeued["attributes"] == {"conversation_id": "c1", "RetryAttempt": 1}
    assert requeued["delay"] == 1 + 15 * 2**0
    assert requeued["body"]["body"] == "second"
    assert fast.metric("LockContention") == 1 and fast.metric("Requeued") == 1


def test_same_message_sid_twice_is_appended_once(fast):
    params = whatsapp_text("only once")
    fast.handle(twilio_event("whatsapp", params))
    fast.handle(twilio_event("whatsapp", params))  # Twilio retried

    fast.deliver("whatsapp")
    fast.deliver("ai")

    record = fast.get()
    assert [m["message_id"] for m in record["messages"]].count(params["MessageSid"]) == 1
    assert fast.metric("DuplicateMessageDetected") == 1
    assert len(fast.outbox()) == 1


def test_sqs_redelivery_of_an_appended_batch_is_acknowledged_without_a_second_reply(fast):
    post(fast, "hello")
    messages = fast.runtime.queue.receive("whatsapp", wait_seconds=3)
    event = sqs_event("whatsapp", messages)
    assert batch_processor(event, None) == {"batchItemFailures": []}
    fast.deliver("ai")

    assert batch_processor(event, None) == {"batchItemFailures": []}  # delivered again

    assert fast.queued("ai") == [] and len(fast.outbox()) == 1
    assert len(fast.get()["messages"]) == 3
    assert fast.metric("DuplicateMessageDetected") == 1


def _race(barrier, event):
    barrier.wait()
    return batch_processor(event, None)


def _race_in_process(barrier, event, results):
    from replies_engine.bootstrap import reset_runtime

    reset_runtime()
    results.put(_race(barrier, event))


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_two_processors_racing_on_one_conversation_have_exactly_one_winner(fast, kind):
    post(fast, "a", "b")
    received = fast.runtime.queue.receive("whatsapp", wait_seconds=3)
    assert len(received) == 2
    events = [sqs_event("whatsapp", [message]) for message in received]

    if kind == "threads":
        barrier = threading.Barrier(2)
        results = []
        threads = [threading.Thread(target=lambda e=e: results.append(_race(barrier, e))) for e in events]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    else:
        ctx = multiprocessing.get_context("spawn")
        barrier, queue = ctx.Barrier(2), ctx.Queue()
        processes = [ctx.Process(target=_race_in_process, args=(barrier, e, queue)) for e in events]
        for process in processes:
            process.start()
        results = [queue.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(30)

    assert results == [{"batchItemFailures": []}] * 2
    [ai] = fast.queued("ai")
    # the originals are still in flight (received, not deleted): the requeued copy is the new one
    [requeued] = [q for q in fast.queued("whatsapp") if q["attributes"]["RetryAttempt"] == 1]
    assert requeued["delay"] == 16
    winner, loser = ai["body"]["messages"][0]["content"], requeued["body"]["body"]
    assert {winner, loser} == {"a", "b"}
    record = fast.get()
    assert record["lock_owner"] == ai["body"]["batch_id"]
    assert [m["content"] for m in record["messages"][1:]] == [winner]


def test_the_requeued_message_is_answered_after_the_first_reply(fast):
    post(fast, "first")
    fast.deliver("whatsapp")
    fast.env(LOCKED_POLICY="defer", REQUEUE_DELAY_SECONDS="0")
    post(fast, "second")
    fast.deliver("whatsapp")  # contention: requeued, visible again in 1 s
    fast.deliver("ai")  # first reply, unlock

    assert fast.deliver("whatsapp") == 1
    fast.deliver("ai")

    assert [r["body"] for r in fast.outbox()] == ["Thanks, we received your 1 message."] * 2
    contents = [m["content"] for m in fast.get()["messages"]]
    assert contents[1:] == [
        "first",
        "Thanks, we received your 1 message.",
        "second",
        "Thanks, we received your 1 message.",
    ]


def test_unreadable_records_are_reported_failed_and_the_rest_processed(fast):
    post(fast, "fine")
    [good] = fast.runtime.queue.receive("whatsapp", wait_seconds=3)
    event = sqs_event("whatsapp", [good])
    event["Records"] += [
        {"messageId": "junk-1", "body": "not json", "messageAttributes": {}},
        {"messageId": "junk-2", "body": json.dumps({"conversation_id": "c1"}), "messageAttributes": {}},
    ]

    result = batch_processor(event, None)

    assert sorted(f["itemIdentifier"] for f in result["batchItemFailures"]) == ["junk-1", "junk-2"]
    assert len(fast.queued("ai")) == 1


def test_a_record_whose_conversation_is_gone_goes_to_the_dlq(fast):
    post(fast, "hello?")
    fast.runtime.store.put(conversation("other"))
    received = fast.runtime.queue.receive("whatsapp", wait_seconds=3)
    body = json.loads(received[0].body)
    body["conversation_id"] = "deleted"
    received = [type(received[0])(**{**received[0].__dict__, "body": json.dumps(body)})]

    assert batch_processor(sqs_event("whatsapp", received), None) == {"batchItemFailures": []}

    [dead] = fast.queued("whatsapp-dlq")
    assert dead["attributes"]["DeadLetterReason"] == "the conversation does not exist"
    assert dead["body"]["body"] == "hello?"


# --- the reply stage ------------------------------------------------------------------------------------


def locked_batch(engine, *texts):
    post(engine, *texts)
    engine.deliver("whatsapp")
    [ai] = engine.runtime.queue.receive("ai")
    return ai


def test_a_reply_from_a_batch_that_lost_its_lock_is_not_sent_and_changes_nothing(fast):
    ai = locked_batch(fast, "hello")
    record = fast.get()
    record.update(lock_owner="batch-someone-else", processing_started_at=clock.iso())
    fast.put(record)

    assert reply_sender(sqs_event("ai", [ai]), None) == {"batchItemFailures": []}

    assert fast.outbox() == []
    assert fast.get() == record


def test_a_failed_send_unlocks_to_processing_error_and_is_not_retried(fast, monkeypatch):
    ai = locked_batch(fast, "hello")

    def refuse(*args):
        raise ConnectionError("provider down")

    monkeypatch.setattr(fast.runtime.senders["whatsapp"], "send", refuse)

    assert reply_sender(sqs_event("ai", [ai]), None) == {"batchItemFailures": []}
    record = fast.get()
    assert record["conversation_status"] == "processing_error" and "lock_owner" not in record
    assert [m["content"] for m in record["messages"]][-1] == "hello"  # the message stays


def test_a_failing_responder_keeps_the_lock_and_the_record_is_retried(fast, monkeypatch):
    ai = locked_batch(fast, "hello")

    def broken(context):
        raise TimeoutError("model timed out")

    monkeypatch.setattr(fast.runtime.responder, "respond", broken)

    result = reply_sender(sqs_event("ai", [ai]), None)

    assert result == {"batchItemFailures": [{"itemIdentifier": ai.message_id}]}
    assert fast.get()["conversation_status"] == "processing_reply"
    assert fast.outbox() == []
