"""Debounce mode (docs/design.md §4.6) on both backends: one reply per burst, after the person pauses; a
message during the AI's work answered once; the caps; flush tokens and new messages racing."""

from __future__ import annotations

import itertools
import json
import threading
import time

import pytest

from replies_engine import clock
from replies_engine.handlers import batch_processor
from replies_engine.local.workers import sqs_event

from .fakes import TwilioApi
from .payloads import twilio_event, whatsapp_text


@pytest.fixture
def debounce(engine):
    engine.env(
        BATCHING_MODE="debounce",
        QUIET_SECONDS="1",
        MAX_WAIT_SECONDS="30",
        MAX_BATCH_MESSAGES="20",
        BATCH_WINDOW_SECONDS="0",
    )
    return engine


def post(engine, text):
    params = whatsapp_text(text)
    assert engine.handle(twilio_event("whatsapp", params))["statusCode"] == 200
    return params["MessageSid"]


def pump(engine, seconds, until=None, queues=("whatsapp", "ai")):
    """Run the workers of `queues` for up to `seconds`, or until `until()` holds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for queue in queues:
            engine.deliver(queue, wait_seconds=0)
        if until and until():
            return
        time.sleep(0.1)


def users(engine):
    return [m["content"] for m in engine.get()["messages"] if m["role"] == "user"]


def test_a_burst_two_seconds_apart_gets_one_reply_after_the_pause(engine):
    engine.env(BATCHING_MODE="debounce", QUIET_SECONDS="3", BATCH_WINDOW_SECONDS="0")
    for n, text in enumerate(("hi", "I wanted to ask", "can I move my appointment?")):
        if n:
            pump(engine, 2)  # the person types for 2 s: tokens come and find the burst still going
        post(engine, text)
    assert engine.outbox() == []

    pump(engine, 5, until=lambda: engine.outbox())

    assert [r["body"] for r in engine.outbox()] == ["Thanks, we received your 3 messages."]
    assert users(engine) == ["hi", "I wanted to ask", "can I move my appointment?"]
    record = engine.get()
    assert record["pending_messages"] == [] and record["conversation_status"] == "ai_response_sent"
    assert engine.metric("BatchSize") == 3


def test_stage_1_queues_at_once_and_never_refuses_a_locked_conversation(debounce):
    debounce.put(
        dict(
            debounce.get(),
            conversation_status="processing_reply",
            lock_owner="b",
            processing_started_at=clock.iso(),
        )
    )

    response = debounce.handle(twilio_event("whatsapp", whatsapp_text("still there?")))

    assert response["body"].endswith("<Response/>")  # no "we're working on it" message
    [queued] = debounce.queued("whatsapp")
    assert queued["delay"] == 0 and "refused_messages" not in debounce.get()


@pytest.mark.parametrize("supersede", ["regenerate", "drop"])
def test_a_message_arriving_while_the_ai_works_is_answered_exactly_once(debounce, supersede):
    debounce.env(SUPERSEDE=supersede)
    post(debounce, "first")
    pump(debounce, 3, until=lambda: debounce.queued("ai"), queues=["whatsapp"])  # the batch waits for the AI
    post(debounce, "second")  # typed while the AI works: not refused
    debounce.deliver("whatsapp", wait_seconds=0)  # now pending

    pump(debounce, 4, until=lambda: debounce.outbox() and not debounce.all_queued())

    # regenerate: answered again under the same lock; drop: the later batch answers both, since
    # "first" was never answered. Either way the stale reply is never sent.
    assert [r["body"] for r in debounce.outbox()] == ["Thanks, we received your 2 messages."]
    assert users(debounce) == ["first", "second"]
    assert debounce.get()["pending_messages"] == []
    assert debounce.metric("ReplySuperseded") == 1


def test_someone_who_never_pauses_is_answered_after_max_wait(debounce):
    debounce.env(QUIET_SECONDS="2", MAX_WAIT_SECONDS="3")
    started = time.monotonic()
    for n in range(7):  # one message every 0.7 s for 5 s: never a 2 s pause
        post(debounce, f"and {n}")
        pump(debounce, 0.7)
        if debounce.outbox():
            break

    assert debounce.outbox(), "no answer although the person wrote for MAX_WAIT_SECONDS"
    assert time.monotonic() - started <= 3 + 1.5


def test_max_batch_messages_flushes_early(debounce):
    debounce.env(QUIET_SECONDS="30", MAX_BATCH_MESSAGES="3")
    for text in ("a", "b", "c"):
        post(debounce, text)
        debounce.deliver("whatsapp", wait_seconds=0)

    pump(debounce, 3, until=lambda: debounce.outbox())

    assert [r["body"] for r in debounce.outbox()] == ["Thanks, we received your 3 messages."]


def test_a_duplicate_is_pending_once_and_appended_once(debounce):
    params = whatsapp_text("once")
    for _ in range(2):
        debounce.handle(twilio_event("whatsapp", params))
    pump(debounce, 3, until=lambda: debounce.outbox())

    assert users(debounce) == ["once"] and debounce.metric("DuplicateMessageDetected") == 1


def flush_event(engine):
    token = {"kind": "flush", "conversation_id": "c1", "channel_type": "whatsapp"}
    return {
        "Records": [
            {"messageId": f"token-{time.monotonic_ns()}", "body": json.dumps(token), "messageAttributes": {}}
        ]
    }


def test_flush_tokens_racing_make_exactly_one_batch(debounce):
    debounce.env(QUIET_SECONDS="0")
    for run in range(8):
        for n in range(3):
            params = whatsapp_text(f"run {run} message {n}")
            debounce.handle(twilio_event("whatsapp", params))
        debounce.deliver("whatsapp", wait_seconds=0)  # pending, and their tokens queued
        barrier, results = threading.Barrier(4), []

        def flush(barrier=barrier, results=results):
            barrier.wait()
            results.append(batch_processor(flush_event(debounce), None))

        threads = [threading.Thread(target=flush) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

        assert results == [{"batchItemFailures": []}] * 4
        [ai] = [q for q in debounce.queued("ai")]
        assert [m["content"] for m in ai["body"]["messages"]] == [f"run {run} message {n}" for n in range(3)]
        pump(debounce, 3, until=lambda: not debounce.all_queued())  # the reply unlocks for the next run
    assert len(debounce.outbox()) == 8


def test_new_messages_racing_the_flush_are_never_lost_nor_doubled(debounce):
    debounce.env(QUIET_SECONDS="0", LOCK_TIMEOUT_SECONDS="300")
    sids = []
    counter = itertools.count()

    def writer(stop):
        while not stop.is_set():
            params = whatsapp_text(f"w{next(counter)}")
            sids.append(params["MessageSid"])
            debounce.handle(twilio_event("whatsapp", params))
            batch_processor(
                sqs_event("whatsapp", debounce.runtime.queue.receive("whatsapp", max_messages=10)), None
            )

    stop = threading.Event()
    thread = threading.Thread(target=writer, args=(stop,))
    thread.start()
    try:
        for _ in range(10):
            batch_processor(flush_event(debounce), None)  # races the writer's add_pending
            debounce.deliver("ai", wait_seconds=0)  # unlock: the next flush can run
    finally:
        stop.set()
        thread.join(30)
    pump(debounce, 5, until=lambda: not debounce.get()["pending_messages"] and not debounce.queued("ai"))

    record = debounce.get()
    appended = [m["message_id"] for m in record["messages"] if m["role"] == "user"]
    pending = [m["message_id"] for m in record["pending_messages"]]
    assert sorted(appended + pending) == sorted(sids)  # each exactly once, in one place or the other
    assert len(set(appended)) == len(appended)


def _flush_in_process(barrier, event, results):
    from replies_engine.bootstrap import reset_runtime

    reset_runtime()
    barrier.wait()
    results.put(batch_processor(event, None))


def test_flush_tokens_racing_in_separate_processes_make_exactly_one_batch(debounce):
    import multiprocessing

    debounce.env(QUIET_SECONDS="0")
    for n in range(3):
        debounce.handle(twilio_event("whatsapp", whatsapp_text(f"message {n}")))
    debounce.deliver("whatsapp", wait_seconds=0)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    processes = [
        ctx.Process(target=_flush_in_process, args=(barrier, flush_event(debounce), results))
        for _ in range(3)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(30)

    assert outcomes == [{"batchItemFailures": []}] * 3
    [ai] = debounce.queued("ai")
    assert [m["content"] for m in ai["body"]["messages"]] == ["message 0", "message 1", "message 2"]
    assert debounce.get()["pending_messages"] == []


@pytest.mark.parametrize("typing_status", [200, 503])
def test_whatsapp_shows_typing_while_the_ai_works_and_a_failure_changes_nothing(debounce, typing_status):
    debounce.env(TWILIO_ACCOUNT_SID="AC" + "1" * 32, QUIET_SECONDS="0")
    twilio = TwilioApi(typing_status)
    debounce.runtime.senders["whatsapp"].http_client = twilio
    sid = post(debounce, "hello")

    pump(debounce, 3, until=lambda: len(twilio.requests) >= 2)

    typing, reply = twilio.requests
    assert typing["uri"] == "https://messaging.twilio.com/v2/Indicators/Typing.json"
    assert typing["data"] == {"messageId": sid, "channel": "whatsapp"}
    assert (
        reply["uri"].endswith("/Messages.json")
        and reply["data"]["Body"] == "Thanks, we received your 1 message."
    )
    assert debounce.get()["conversation_status"] == "ai_response_sent"


def test_a_conversation_handed_to_a_human_while_the_ai_works_gets_no_ai_reply(debounce):
    post(debounce, "hello")
    pump(debounce, 3, until=lambda: debounce.queued("ai"), queues=["whatsapp"])
    debounce.put(dict(debounce.get(), auto_queue_reply_message=True))  # an agent took over

    pump(debounce, 3, until=lambda: not debounce.queued("ai"), queues=["ai"])

    assert debounce.outbox() == []
    assert debounce.get()["conversation_status"] == "handed_off" and debounce.metric("ReplySuperseded") == 1


def test_a_flush_moves_at_most_99_messages_and_the_rest_wait_on_both_backends(debounce):
    """One rule for both: one conditional write takes the lock and stores the batch (DynamoDB's
    transaction holds the record and 99 messages)."""
    stamp = clock.iso()
    pending = [
        {"message_id": f"SM{n:03d}", "role": "user", "content": f"m{n}", "timestamp": stamp, "batch_id": None}
        for n in range(120)
    ]
    debounce.put({**debounce.get(), "messages": [], "pending_messages": pending, "pending_version": 1})

    flushed = debounce.runtime.store.flush_pending(
        "c1", "b1", pending_version=1, now=time.time(), lock_timeout_seconds=60
    )

    assert [m["message_id"] for m in flushed.appended] == [m["message_id"] for m in pending[:99]]
    assert debounce.get()["pending_messages"] == pending[99:]
    assert [m["message_id"] for m in debounce.get()["messages"]] == [m["message_id"] for m in pending[:99]]
