"""Every accepted message gets an answer, on both backends: a lease that runs out while the
context waits or the model thinks, a holder killed after the lock, after the responder or after the
send, the sweeper racing a late reply, a send that can never succeed. Each ends with every message
answered once, by a reply that saw it, and nobody answered twice."""

from __future__ import annotations

import threading
import time

import pytest

from replies_engine.handlers import stalled_sweeper
from replies_engine.replies import pipeline
from replies_engine.replies.responders import LocalResponder

from .payloads import twilio_event, whatsapp_text

LEASE = 1  # LOCK_TIMEOUT_SECONDS: short, so that the tests see leases run out


class Killed(BaseException):
    """The process dies here: nothing after it runs, no handler catches it."""


@pytest.fixture
def short(engine):
    engine.env(LOCK_TIMEOUT_SECONDS=str(LEASE), BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0")
    return engine


def post(engine, text: str) -> str:
    params = whatsapp_text(text)
    assert engine.handle(twilio_event("whatsapp", params))["statusCode"] == 200
    return params["MessageSid"]


def replies(engine) -> list[dict]:
    return [m for m in engine.get()["messages"] if m["role"] == "assistant"][1:]  # after the outreach


def expire() -> None:
    time.sleep(LEASE + 0.2)


def test_a_context_that_waited_past_the_lease_is_still_answered_once(short):
    sid = post(short, "hello")
    assert short.deliver("whatsapp") == 1
    expire()  # the context waited in the AI queue longer than the lease; nobody took the lock over

    assert short.deliver("ai") == 1

    [reply] = replies(short)
    assert reply["answers"] == [sid] and len(short.outbox()) == 1
    assert short.get()["conversation_status"] == "ai_response_sent"


def test_the_sweeper_redrives_a_waiting_context_and_the_stale_one_is_dropped(short):
    sid = post(short, "hello")
    short.deliver("whatsapp")
    expire()
    assert stalled_sweeper({}, None)["redriven"] == 1  # the lease ran out: re-driven under a new batch

    delivered = 0
    while batch := short.deliver("ai", wait_seconds=1):  # the stale context and the re-driven one
        delivered += batch
    assert delivered == 2

    assert [r["answers"] for r in replies(short)] == [[sid]]
    assert len(short.outbox()) == 1


def test_a_slow_model_keeps_its_lease_by_heartbeat(short):
    class Slow:
        def respond(self, ai_context):
            time.sleep(LEASE * 2.5)  # far past the lease
            return "a considered answer"

    short.runtime.responder = Slow()
    sid = post(short, "hello")
    short.deliver("whatsapp")
    sweeps = []
    stop = threading.Event()

    def sweeper():
        while not stop.wait(0.2):
            sweeps.append(stalled_sweeper({}, None))

    thread = threading.Thread(target=sweeper)
    thread.start()
    try:
        assert short.deliver("ai") == 1
    finally:
        stop.set()
        thread.join()

    assert len(sweeps) >= 5 and all(s["reset"] == 0 for s in sweeps)  # never stalled: renewed
    assert [(r["content"], r["answers"]) for r in replies(short)] == [("a considered answer", [sid])]


def test_a_holder_killed_after_the_responder_is_answered_by_the_sweeper(short, monkeypatch):
    sid = post(short, "hello")
    short.deliver("whatsapp")
    renew = short.runtime.store.renew_lock

    def die_before_the_send(conversation_id, batch_id, *, now, changes=None):
        if changes and changes.get("sending"):
            raise Killed
        return renew(conversation_id, batch_id, now=now, changes=changes)

    monkeypatch.setattr(short.runtime.store, "renew_lock", die_before_the_send)
    with pytest.raises(Killed):
        short.deliver("ai")
    monkeypatch.setattr(short.runtime.store, "renew_lock", renew)
    expire()

    assert stalled_sweeper({}, None) == {"checked": 1, "reset": 1, "redriven": 1}
    assert short.deliver("ai") == 1

    assert [r["answers"] for r in replies(short)] == [[sid]] and len(short.outbox()) == 1


def test_a_holder_killed_after_the_send_is_never_answered_twice(short, monkeypatch):
    sid = post(short, "hello")
    short.deliver("whatsapp")
    sender = short.runtime.senders["whatsapp"]
    send = sender.send

    def send_then_die(*args, **kwargs):
        send(*args, **kwargs)  # it went out
        raise Killed

    monkeypatch.setattr(sender, "send", send_then_die)
    with pytest.raises(Killed):
        short.deliver("ai")
    expire()

    assert stalled_sweeper({}, None) == {"checked": 1, "reset": 1, "redriven": 0}

    [reply] = replies(short)
    assert reply["delivery_status"] == delivery(short) and reply["answers"] == [sid]
    assert reply["content"] == "Thanks, we received your 1 message."
    assert len(short.outbox()) == 1  # recorded as sent, not sent again
    assert short.get()["conversation_status"] == "ai_response_sent"


def delivery(engine) -> str:
    """What a reply found noted as `sending` is recorded as: the embedded outbox can be searched, so
    its sender knows that it went ("queued", as any reply handed over); an SQS outbox cannot say
    ("unknown", never resent)."""
    return "queued" if engine.backend == "sqlite" else "unknown"


@pytest.mark.sqlite_only
def test_a_reply_noted_but_never_sent_is_sent_once_the_holder_is_gone(short, monkeypatch):
    sid = post(short, "hello")
    short.deliver("whatsapp")
    sender = short.runtime.senders["whatsapp"]

    def die_before_it_goes(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(sender, "send", die_before_it_goes)
    with pytest.raises(Killed):
        short.deliver("ai")
    monkeypatch.undo()
    expire()

    assert stalled_sweeper({}, None) == {"checked": 1, "reset": 1, "redriven": 1}  # it did not go: again
    assert short.deliver("ai") == 1

    [reply] = replies(short)
    assert reply["answers"] == [sid] and reply["delivery_status"] == "queued"
    assert len(short.outbox()) == 1


def test_the_sweeper_racing_a_late_reply_lets_only_the_redrive_answer(short, monkeypatch):
    """A holder whose heartbeat stopped (a frozen process) comes back after the sweeper re-drove its
    messages: its late reply is not sent."""

    class Frozen:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            pass

    class Late:
        def respond(self, ai_context):
            expire()
            assert stalled_sweeper({}, None)["redriven"] == 1  # meanwhile, the sweeper
            return "a late answer"

    sid = post(short, "hello")
    short.deliver("whatsapp")
    monkeypatch.setattr(pipeline, "Heartbeat", Frozen)
    short.runtime.responder = Late()
    assert short.deliver("ai") == 1  # the late reply: dropped
    assert short.outbox() == []

    monkeypatch.undo()
    short.runtime.responder = LocalResponder()
    assert short.deliver("ai") == 1  # the re-driven context

    assert [(r["content"], r["answers"]) for r in replies(short)] == [
        ("Thanks, we received your 1 message.", [sid])
    ]
    assert len(short.outbox()) == 1


def test_a_reply_that_can_never_be_sent_is_dead_lettered_with_its_reason(short, monkeypatch):
    sid = post(short, "hello")
    short.deliver("whatsapp")

    def refused(*args, **kwargs):
        raise ValueError("the number is not a WhatsApp user")

    monkeypatch.setattr(short.runtime.senders["whatsapp"], "send", refused)
    assert short.deliver("ai") == 1

    [dead] = short.queued("ai-dlq")
    assert [m["message_id"] for m in dead["body"]["messages"]] == [sid]
    assert dead["attributes"]["DeadLetterReason"].startswith("the reply could not be sent: the number")
    assert short.get()["conversation_status"] == "processing_error"


def test_messages_redriven_too_often_go_to_the_dlq_for_an_operator(short):
    short.env(LOCK_TIMEOUT_SECONDS=str(LEASE), MAX_RETRY_ATTEMPTS="1", BATCH_DELAY_SECONDS="0")
    sid = post(short, "hello")
    short.deliver("whatsapp")  # its context is lost: the AI stage never answers it
    expire()
    assert stalled_sweeper({}, None)["redriven"] == 1
    expire()

    assert stalled_sweeper({}, None) == {"checked": 1, "reset": 1, "redriven": 0}

    [dead] = short.queued("ai-dlq")
    assert dead["attributes"]["DeadLetterReason"] == "unanswered after 1 re-drives"
    assert [m["message_id"] for m in dead["body"]["messages"]] == [sid]
    assert short.get()["conversation_status"] == "processing_timeout"


def test_a_failed_reply_comes_back_in_seconds_not_after_the_visibility_timeout(short, monkeypatch):
    monkeypatch.setattr(pipeline, "RETRY_BACKOFF_SECONDS", 1)  # 10 s in earnest
    calls = []

    class DownOnce:
        def respond(self, ai_context):
            calls.append(time.monotonic())
            if len(calls) == 1:
                raise RuntimeError("the model is down")
            return "back again"

    short.runtime.responder = DownOnce()
    sid = post(short, "hello")
    short.deliver("whatsapp")
    assert short.deliver("ai") == 1  # failed: back to the queue, visible again 1 s later

    assert short.deliver("ai", wait_seconds=5) == 1  # the queue's own timeout would be 120 s (720 s in AWS)

    assert calls[1] - calls[0] < 5
    assert [(r["content"], r["answers"]) for r in replies(short)] == [("back again", [sid])]


def test_a_context_redelivered_after_its_holder_died_sending_is_not_sent_again(short, monkeypatch):
    short.env(REPLIES_VISIBILITY_TIMEOUT_SECONDS="1", LOCK_TIMEOUT_SECONDS="60")  # back before the lease ends
    sid = post(short, "hello")
    short.deliver("whatsapp")
    sender = short.runtime.senders["whatsapp"]
    send = sender.send

    def send_then_die(*args, **kwargs):
        send(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(sender, "send", send_then_die)
    with pytest.raises(Killed):
        short.deliver("ai")
    monkeypatch.undo()

    assert short.deliver("ai", wait_seconds=5) == 1  # the same context, redelivered

    [reply] = replies(short)
    assert reply["delivery_status"] == delivery(short) and reply["answers"] == [sid]
    assert len(short.outbox()) == 1  # not sent again
    assert short.get()["conversation_status"] == "ai_response_sent"
