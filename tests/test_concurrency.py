"""Many people at once, on both backends: the local engine's pools answer conversations in
parallel, like Lambda's concurrent invocations, and stopping with replies in flight loses nothing and
sends nothing twice. Parallelism is proven by a responder that answers only once K calls are in
flight together, not by timing."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter

import pytest

from replies_engine.local.workers import LocalEngine

from .conftest import conversation
from .payloads import twilio_event, whatsapp_text
from .processes import cli, cli_json, post_signed, serving

K = 6


def person(n: int) -> str:
    return f"+4915100000{n:03d}"


@pytest.fixture
def crowd(engine):
    """K conversations, one per person, on the default debounce mode with no quiet time."""
    engine.env(
        BATCHING_MODE="debounce",
        QUIET_SECONDS="0",
        BATCH_WINDOW_SECONDS="0",
        REPLY_CONCURRENCY=str(K),
        BATCH_CONCURRENCY="2",
        SWEEP_INTERVAL_SECONDS="3600",
    )
    engine.put(*(conversation(f"p{n}", gsi_recipient_tel=person(n)) for n in range(K)))
    return engine


class Rendezvous:
    """A responder that answers only when K calls are in flight at the same time."""

    def __init__(self, k: int) -> None:
        self.barrier = threading.Barrier(k, timeout=10)
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def respond(self, ai_context: dict) -> str:
        with self._lock:
            self.calls[ai_context["conversation_id"]] += 1
        self.barrier.wait()  # BrokenBarrierError (a failed reply) unless K wait here together
        return f"answer for {ai_context['conversation_id']}"


def post_all(engine, people=range(K)) -> None:
    for n in people:
        params = whatsapp_text(f"hello from {n}", From=f"whatsapp:{person(n)}", WaId=person(n)[1:])
        assert engine.handle(twilio_event("whatsapp", params))["statusCode"] == 200


def wait_for(predicate, seconds: float):
    deadline = time.monotonic() + seconds
    while not (result := predicate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


def test_k_conversations_are_answered_in_parallel(crowd):
    responder = crowd.runtime.responder = Rendezvous(K)
    local = LocalEngine(crowd.runtime)
    local.start()
    try:
        post_all(crowd)
        wait_for(lambda: len(crowd.outbox()) >= K, 20)
    finally:
        local.stop()

    replies = Counter(r["conversation_id"] for r in crowd.outbox())
    assert replies == {f"p{n}": 1 for n in range(K)}
    assert responder.calls == {f"p{n}": 1 for n in range(K)}  # the barrier never broke: no retries
    for n in range(K):
        record = crowd.get(f"p{n}")
        assert record["conversation_status"] == "ai_response_sent"
        assert [m["content"] for m in record["messages"][1:]] == [f"hello from {n}", f"answer for p{n}"]


def test_a_pool_of_one_cannot_meet_the_rendezvous(crowd):
    """The counter-proof: with one reply slot the barrier breaks, so the test above can fail."""
    crowd.env(REPLY_CONCURRENCY="1")
    responder = crowd.runtime.responder = Rendezvous(2)
    responder.barrier = threading.Barrier(2, timeout=0.5)
    local = LocalEngine(crowd.runtime)
    local.start()
    try:
        post_all(crowd, people=range(2))
        wait_for(lambda: sum(responder.calls.values()) >= 2, 10)
    finally:
        local.stop()

    assert crowd.outbox() == []  # each call waited alone, timed out, and its reply was retried later


class Slow:
    """A responder that takes `seconds`; `started` counts the calls under way."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = 0
        self._lock = threading.Lock()

    def respond(self, ai_context: dict) -> str:
        with self._lock:
            self.started += 1
        time.sleep(self.seconds)
        return f"answer for {ai_context['conversation_id']}"


def test_stopping_with_replies_in_flight_finishes_them_and_hands_back_the_rest(crowd):
    crowd.env(REPLY_CONCURRENCY="3")  # 3 in flight, 3 waiting in the AI queue when the stop comes
    responder = crowd.runtime.responder = Slow(1.0)
    local = LocalEngine(crowd.runtime)
    local.start()
    post_all(crowd)
    assert wait_for(lambda: responder.started == 3, 10)
    local.stop()

    sent = Counter(r["conversation_id"] for r in crowd.outbox())
    assert len(sent) == 3 and set(sent.values()) == {1}  # the three in hand finished, once each
    for n in range(K):  # the rest is unanswered, still queued or pending
        replies = [m for m in crowd.get(f"p{n}")["messages"][1:] if m["role"] == "assistant"]
        assert len(replies) == (f"p{n}" in sent)

    # the next engine answers the rest, and nobody twice
    crowd.runtime.responder = Slow(0)
    local = LocalEngine(crowd.runtime)
    local.start()
    try:
        wait_for(lambda: len(crowd.outbox()) >= K, 20)
    finally:
        local.stop()
    assert Counter(r["conversation_id"] for r in crowd.outbox()) == {f"p{n}": 1 for n in range(K)}


@pytest.mark.sqlite_only
def test_serve_killed_with_replies_in_flight_answers_each_once_after_a_restart(engine_env):
    """SIGKILL of a live `serve` while 4 replies are being made: nothing lost, nothing sent twice."""
    env = {
        **engine_env,
        "PUBLIC_BASE_URL": "",
        "BATCHING_MODE": "debounce",
        "QUIET_SECONDS": "0",
        "LOCAL_RESPONDER_DELAY_SECONDS": "3",
        "REPLIES_VISIBILITY_TIMEOUT_SECONDS": "4",  # > the responder's time, so only a dead holder's return
        "SWEEP_INTERVAL_SECONDS": "3600",
    }
    people = range(4)
    records = [conversation(f"p{n}", gsi_recipient_tel=person(n)) for n in people]
    cli(env, "conversations", "import", "-", stdin=json.dumps(records))
    with serving(env) as (url, process):
        for n in people:
            params = whatsapp_text(f"hello from {n}", From=f"whatsapp:{person(n)}", WaId=person(n)[1:])
            assert post_signed(url, params).status_code == 200
        assert wait_for(lambda: cli_json(env, "queues", "stats")["ai"]["in_flight"] == 4, 10)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    assert cli_json(env, "outbox", "list") == []

    with serving(env):
        replies = wait_for(
            lambda: len(cli_json(env, "outbox", "list")) >= 4 and cli_json(env, "outbox", "list"), 20
        )
    assert Counter(r["conversation_id"] for r in replies) == {f"p{n}": 1 for n in people}
    for n in people:
        record = cli_json(env, "conversations", "show", f"p{n}")
        assert record["conversation_status"] == "ai_response_sent"
        assert [m["role"] for m in record["messages"]] == ["assistant", "user", "assistant"]
