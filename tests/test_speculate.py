"""SPECULATE=on, on both backends and the wall clock: the AI starts at a burst's first message, its reply
is held until the person has been quiet for QUIET_SECONDS, and a message written meanwhile is answered
with the rest, in one reply; never a reply before the quiet period is over."""

from __future__ import annotations

import threading
import time

import pytest

from replies_engine import clock
from replies_engine.config import ConfigurationError, Settings

from .payloads import twilio_event, whatsapp_text

QUIET = 2


@pytest.fixture
def speculating(engine):
    engine.env(SPECULATE="on", QUIET_SECONDS=str(QUIET))
    calls = []
    respond = engine.runtime.responder.respond

    def counted(view, **options):
        calls.append(clock.now())
        return respond(view, **options)

    engine.runtime.responder.respond = counted
    engine.calls = calls
    return engine


def post(engine, text: str) -> float:
    assert engine.handle(twilio_event("whatsapp", whatsapp_text(text)))["statusCode"] == 200
    return clock.now()


def test_the_ai_thinks_at_once_and_the_reply_waits_for_the_quiet(speculating):
    written = post(speculating, "Habt ihr morgen Zeit?")

    speculating.deliver("whatsapp")  # no quiet period first: the batch goes to the AI at once
    speculating.deliver("ai")
    assert len(speculating.calls) == 1 and speculating.calls[0] - written < QUIET
    assert speculating.outbox() == []  # ready, but held: the person may still be typing

    assert speculating.deliver("ai", wait_seconds=QUIET + 2) == 1
    [reply] = speculating.outbox()
    assert clock.parse_iso(reply["created_at"]) >= written + QUIET
    assert reply["body"] == "Thanks, we received your 1 message."
    assert len(speculating.calls) == 1  # the held answer is sent, not asked again
    assert speculating.metric("ReplyHeld") == 1


def test_a_message_written_while_the_reply_is_held_is_answered_with_it_once(speculating):
    post(speculating, "Habt ihr morgen Zeit?")
    speculating.deliver("whatsapp")
    speculating.deliver("ai")  # held
    second = post(speculating, "Und übermorgen?")
    speculating.deliver("whatsapp")  # pending: the conversation is locked by the held reply

    # the held reply comes back and is made again, with it; that one is held, if need be, for the quiet
    while not speculating.outbox() and speculating.deliver("ai", wait_seconds=QUIET + 2):
        pass

    [reply] = speculating.outbox()
    assert reply["body"] == "Thanks, we received your 2 messages."
    assert clock.parse_iso(reply["created_at"]) >= second + QUIET
    assert len(speculating.calls) == 2  # the first answer was not sent: it missed a message
    record = speculating.get()
    assert [m["role"] for m in record["messages"]][1:] == ["user", "user", "assistant"]
    assert "lock_owner" not in record and not record.get("pending_messages")


THINKING = 4  # the local responder's seconds, in the tests where something happens meanwhile


def while_the_ai_thinks(engine, meanwhile) -> list[tuple[str, float]]:
    """A message, and `meanwhile()` 0.5 s into the AI's call on it: how each call ended, in seconds."""
    engine.env(LOCAL_RESPONDER_DELAY_SECONDS=str(THINKING))
    engine.runtime.responder.respond = _recording(engine.runtime.responder.respond, outcomes := [])
    post(engine, "Habt ihr morgen Zeit?")
    engine.deliver("whatsapp")
    first = threading.Thread(target=engine.deliver, args=("ai",))
    first.start()
    time.sleep(0.5)
    meanwhile()
    first.join()
    return outcomes


def test_a_message_written_while_the_ai_thinks_cancels_its_call_and_both_are_answered_once(speculating):
    def write_again():
        post(speculating, "Und übermorgen?")
        speculating.deliver("whatsapp")  # pending: the thinking holds the lock

    outcomes = while_the_ai_thinks(speculating, write_again)

    [(cancelled, took)] = outcomes
    assert cancelled == "CallCancelled" and took < THINKING  # given up, not thought to the end
    assert speculating.metric("AiCallCancelled") == 1
    while not speculating.outbox() and speculating.deliver("ai", wait_seconds=QUIET + 2):
        pass  # the call made again with both messages, its reply held for the quiet if need be

    [reply] = speculating.outbox()
    assert reply["body"] == "Thanks, we received your 2 messages."
    assert [outcome for outcome, _ in outcomes] == ["CallCancelled", "Reply"]
    sent = speculating.get()["messages"][-1]
    assert sent["role"] == "assistant" and sent["usage"]["prompt_tokens"] > 0
    spent = sent["discarded_usage"]  # the cancelled call's, estimated
    assert spent["calls"] == 1 and spent["prompt_tokens"] > 0 and spent["estimated"] is True


def test_a_call_whose_batch_lost_its_lock_is_given_up_and_its_reply_not_sent(speculating):
    def take_over():  # its lease was taken by another batch
        speculating.put({**speculating.get(), "lock_owner": "batch-that-took-over"})

    [(cancelled, took)] = while_the_ai_thinks(speculating, take_over)

    assert cancelled == "CallCancelled" and took < THINKING
    assert speculating.outbox() == [] and speculating.queued("ai") == []  # the new holder answers


def test_a_cancelled_call_with_nothing_to_move_in_is_asked_again_at_once(speculating, monkeypatch):
    from replies_engine.replies import pipeline

    looks = []  # the watch sees newer messages; by the time they would be moved in, there are none
    monkeypatch.setattr(pipeline, "superseded", lambda *args: not looks and not looks.append(1))
    speculating.env(LOCAL_RESPONDER_DELAY_SECONDS="2")
    post(speculating, "Habt ihr morgen Zeit?")
    speculating.deliver("whatsapp")

    assert speculating.deliver("ai") == 1  # cancelled…
    assert speculating.metric("AiCallCancelled") == 1 and speculating.outbox() == []
    assert speculating.deliver("ai", wait_seconds=0.5) == 1  # …and asked again, not after a retry's wait

    [reply] = speculating.outbox()
    assert reply["body"] == "Thanks, we received your 1 message."
    assert speculating.get()["messages"][-1]["discarded_usage"]["calls"] == 1


def _recording(respond, outcomes):
    """`respond`, noting how each call ended and how long it took."""

    def recorded(view, **options):
        started = time.monotonic()
        try:
            answer = respond(view, **options)
        except Exception as exc:
            outcomes.append((type(exc).__name__, time.monotonic() - started))
            raise
        outcomes.append((type(answer).__name__, time.monotonic() - started))
        return answer

    return recorded


@pytest.mark.parametrize("other", [{"SUPERSEDE": "drop"}, {"BATCHING_MODE": "delay"}], ids=["drop", "delay"])
def test_speculation_needs_debounce_that_regenerates(other):
    with pytest.raises(ConfigurationError, match="SPECULATE=on needs BATCHING_MODE=debounce"):
        Settings.from_env({"SPECULATE": "on", **other})


def test_a_reply_is_held_until_the_newest_message_is_quiet_old_but_never_past_the_max_wait():
    from replies_engine.batching_modes import Debounce

    now = 1_800_000_000.0
    batch = [{"message_id": f"SM{n}", "timestamp": clock.iso(now - ago)} for n, ago in ((1, 10), (2, 1))]
    speculating = Debounce(quiet_seconds=3, max_wait_seconds=30, max_batch_messages=20,
                           supersede="regenerate", speculate=True)  # fmt: skip

    assert speculating.hold_seconds(batch, now) == pytest.approx(2)
    assert speculating.hold_seconds(batch, now + 5) == 0
    assert speculating.hold_seconds(batch, now + 20.5) == 0  # the oldest waited 30 s: it goes
    assert speculating.due(batch[1:], now)  # the AI starts at once
    waiting = Debounce(3, 30, 20, "regenerate")
    assert waiting.hold_seconds(batch, now) == 0 and not waiting.due(batch[1:], now)
