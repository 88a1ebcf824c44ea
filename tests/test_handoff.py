"""Human handoff as a loop, on both backends: a hand-off by rule, by the AI and by an
operator; a human's reply sent and recorded; the hand-back, then an AI reply that sees what the human
said; no AI reply while a human owns the conversation. The operators' API is driven over HTTP through
the same Starlette app `serve` runs (httpx2's ASGI transport), with the engine's real queues and
workers behind it."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import httpx2
import pytest

from replies_engine import operators
from replies_engine.local.server import create_app

from .conftest import conversation
from .payloads import twilio_event, whatsapp_text

TOKEN = "operator-secret"


class Api:
    """The operators' API of a `serve` (on loopback unless told otherwise)."""

    def __init__(self, loopback: bool = True) -> None:
        self.app = create_app(loopback=loopback)

    def __call__(
        self, method: str, path: str, body=None, token: str | None = TOKEN, headers=None, **kwargs
    ) -> httpx2.Response:
        headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}

        async def call() -> httpx2.Response:
            transport = httpx2.ASGITransport(app=self.app)
            async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as client:
                return await client.request(method, path, json=body, headers=headers, **kwargs)

        return asyncio.run(call())


class Recorder:
    """A responder that answers `text` and keeps the contexts it was given."""

    def __init__(self, text: str = "an AI answer") -> None:
        self.text, self.contexts = text, []

    def respond(self, ai_context):
        self.contexts.append(ai_context)
        return self.text


@pytest.fixture
def inbox(engine):
    engine.env(OPERATOR_TOKEN=TOKEN, BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0")
    engine.api = Api()
    return engine


def token_of(engine, name: str, role: str = "agent") -> str:
    """The personal token of operator `name`, whose account is made on first use."""
    tokens = engine.__dict__.setdefault("operator_tokens", {})
    if name not in tokens:
        tokens[name] = operators.add(engine.runtime, name, role)["token"]
    return tokens[name]


def post(engine, text: str) -> str:
    params = whatsapp_text(text)
    assert engine.handle(twilio_event("whatsapp", params))["statusCode"] == 200
    return params["MessageSid"]


def answered_by_ai(engine, text: str) -> None:
    post(engine, text)
    assert engine.deliver("whatsapp") == 1
    assert engine.deliver("ai") == 1


def thread(engine) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in engine.get()["messages"]][1:]  # after the outreach


def test_a_rule_hands_off_and_the_message_waits_in_the_thread_for_a_human(inbox):
    inbox.put(conversation(auto_queue_reply_message=True))

    sid = post(inbox, "I have a complaint")

    record = inbox.get()
    assert record["owner"] == "human" and record["handoff_reason"] == "a routing rule"
    assert record["messages"][-1]["message_id"] == sid and record["messages"][-1]["no_reply"] == "human"
    assert [m["body"]["message_sid"] for m in inbox.queued("handoff")] == [sid]
    assert inbox.queued("whatsapp") == [] and inbox.queued("ai") == []
    [row] = inbox.api("GET", "/api/conversations?owner=human").json()["conversations"]
    assert row["label"] == "waiting_for_human" and row["waiting_seconds"] >= 0
    assert row["last_message"]["content"] == "I have a complaint"
    assert inbox.api("GET", "/api/conversations?owner=ai").json()["conversations"] == []


def test_a_human_reply_is_sent_and_recorded_then_the_hand_back_lets_the_ai_answer_again(inbox):
    inbox.put(conversation(auto_queue_reply_message=True))
    post(inbox, "I have a complaint")

    sent = inbox.api(
        "POST",
        "/api/conversations/c1/reply",
        {"text": "Sorry! Sam here, sorting it."},
        token=token_of(inbox, "sam"),
    )

    assert sent.status_code == 200, sent.text
    [entry] = inbox.outbox()
    assert entry["body"] == "Sorry! Sam here, sorting it." and entry["to"].endswith("+4915112345678")
    agent = inbox.get()["messages"][-1]
    assert (agent["role"], agent["operator"], agent["message_id"]) == ("agent", "sam", entry["message_id"])
    assert inbox.api("GET", "/api/conversations").json()["conversations"][0]["label"] == "agent"

    assert (
        inbox.api("POST", "/api/conversations/c1/handback", {}, token=token_of(inbox, "sam")).json()["owner"]
        == "ai"
    )
    recorder = inbox.runtime.responder = Recorder()
    answered_by_ai(inbox, "thanks, one more question")

    record = inbox.get()
    assert record["owner"] == "ai" and record["auto_queue_reply_message"] is False
    assert thread(inbox)[-2:] == [("user", "thanks, one more question"), ("assistant", "an AI answer")]
    [context] = recorder.contexts
    assert [m["content"] for m in context["messages"]] == ["thanks, one more question"]
    assert [m["role"] for m in context["history"]][-3:] == ["user", "agent", "event"]  # it sees the human


def test_the_ai_hands_off_with_a_last_word_and_then_stays_silent(inbox):
    answered_by_ai(inbox, "can I talk to a human please?")

    record = inbox.get()
    assert record["owner"] == "human" and record["conversation_status"] == "handed_off"
    assert record["handed_off_by"] == "ai" and record["handoff_reason"] == "the person asked for a human"
    assert [e["body"] for e in inbox.outbox()] == [
        "I'm handing you over to a colleague, who will answer you here shortly."
    ]
    [notice] = inbox.queued("handoff")
    assert notice["body"]["kind"] == "handoff" and notice["body"]["by"] == "ai"

    post(inbox, "hello?")

    assert inbox.queued("whatsapp") == [] and len(inbox.outbox()) == 1  # no AI reply while a human owns it
    assert thread(inbox)[-1] == ("user", "hello?")


def test_an_operator_taking_over_while_a_batch_is_in_flight_withholds_the_ai_reply(inbox):
    post(inbox, "hello")
    inbox.deliver("whatsapp")  # the batch holds the lock; its context waits for the AI

    taken = inbox.api(
        "POST", "/api/conversations/c1/handoff", {"reason": "VIP customer"}, token=token_of(inbox, "kim")
    )
    inbox.deliver("ai")

    assert taken.json() == {"status": "handed_off", "owner": "human"}
    assert inbox.outbox() == [] and inbox.get()["conversation_status"] == "handed_off"
    assert thread(inbox)[-1][0] == "event" and "VIP customer" in thread(inbox)[-1][1]


def test_an_operator_reply_takes_the_conversation_over(inbox):
    answered_by_ai(inbox, "hello")

    inbox.api("POST", "/api/conversations/c1/reply", {"text": "Kim here."}, token=token_of(inbox, "kim"))

    record = inbox.get()
    assert record["owner"] == "human" and record["handed_off_by"] == "kim"


@pytest.mark.parametrize("token", [None, "wrong"])
def test_a_missing_or_wrong_token_is_401_and_changes_nothing(inbox, token):
    inbox.put(conversation(auto_queue_reply_message=True))
    post(inbox, "hi")
    before = inbox.get()

    for method, path, body in [
        ("GET", "/api/conversations", None),
        ("POST", "/api/conversations/c1/reply", {"text": "x"}),
        ("POST", "/api/conversations/c1/handback", {}),
        ("POST", "/api/dlq/whatsapp/redrive", {}),
    ]:
        assert inbox.api(method, path, body, token=token).status_code == 401

    assert inbox.get() == before and inbox.outbox() == []


def test_without_a_token_only_loopback_is_served(engine):
    assert Api(loopback=True)("GET", "/api/queues", token=None).status_code == 200
    refused = Api(loopback=False)("GET", "/api/queues", token=None)

    assert refused.status_code == 401 and "OPERATOR_TOKEN" in refused.json()["error"]


def test_bad_requests_get_clear_errors(inbox):
    post(inbox, "hi")

    assert inbox.api("POST", "/api/conversations/nope/reply", {"text": "hi"}).status_code == 404
    assert inbox.api("GET", "/api/conversations/nope").status_code == 404
    assert inbox.api("POST", "/api/conversations/c1/reply", {"text": "  "}).status_code == 400
    assert inbox.api("POST", "/api/conversations/c1/reply", {"text": 5}).status_code == 400
    form = inbox.api("POST", "/api/conversations/c1/reply", content=b"text=hi", token=TOKEN)
    assert form.status_code == 415  # a cross-site form cannot post JSON
    assert inbox.api("GET", "/api/conversations?owner=robot").status_code == 400
    assert inbox.api("GET", "/api/dlq/nowhere").status_code == 404
    assert inbox.outbox() == []


def test_nothing_is_sent_to_a_person_who_opted_out(inbox):
    post(inbox, "STOP")

    refused = inbox.api("POST", "/api/conversations/c1/reply", {"text": "but wait"})

    assert refused.status_code == 409 and "opted out" in refused.json()["error"]
    assert inbox.outbox() == []


def test_queues_and_dead_letters_through_the_api(inbox):
    post(inbox, "hello")

    stats = inbox.api("GET", "/api/queues").json()

    assert stats["whatsapp"]["available"] + stats["whatsapp"]["delayed"] == 1
    assert inbox.api("POST", "/api/dlq/whatsapp/redrive", {}).json() == {"redriven": 0}


@pytest.mark.parametrize(("hours_ago", "owner"), [(30, "ai"), (2, "human")])
def test_a_human_silent_for_handoff_auto_return_hours_hands_back_when_the_person_writes(
    inbox, hours_ago, owner
):
    from replies_engine import clock

    inbox.env(HANDOFF_AUTO_RETURN_HOURS="24")
    inbox.api = Api()
    inbox.put(conversation(owner="human", handed_off_at=clock.iso(clock.now() - hours_ago * 3600)))

    post(inbox, "anyone there?")

    assert inbox.get()["owner"] == owner
    if owner == "ai":
        assert (
            thread(inbox)[-1][0] == "event" and "no human answered" in thread(inbox)[-1][1]
        )  # the message: queued
        assert len(inbox.queued("whatsapp")) == 1 and inbox.queued("handoff") == []
    else:
        assert inbox.queued("whatsapp") == [] and len(inbox.queued("handoff")) == 1


# --- found in review -----------------------------------------------------------------------------------


def test_without_a_token_a_page_that_rebinds_its_name_to_loopback_is_refused(engine):
    api = Api(loopback=True)

    rebound = api("GET", "/api/conversations/c1", token=None, headers={"Host": "evil.example:8080"})

    assert rebound.status_code == 401 and engine.outbox() == []


def test_a_retried_webhook_for_a_human_is_recorded_and_queued_once(inbox):
    inbox.put(conversation(auto_queue_reply_message=True))
    params = whatsapp_text("I have a complaint")

    for _ in range(2):  # Twilio's retry of the same message
        assert inbox.handle(twilio_event("whatsapp", params))["statusCode"] == 200

    assert len(inbox.queued("handoff")) == 1
    assert [m["message_id"] for m in inbox.get()["messages"]].count(params["MessageSid"]) == 1


def test_a_locked_conversation_a_human_owns_takes_the_message_for_them(inbox):
    inbox.env(LOCKED_POLICY="reply")  # delay mode: a locked conversation would answer LOCKED_REPLY_TEXT
    inbox.api = Api()
    post(inbox, "hello")
    inbox.deliver("whatsapp")  # locked by the AI's batch
    inbox.api("POST", "/api/conversations/c1/handoff", {"reason": "VIP"}, token=token_of(inbox, "kim"))

    answer = inbox.handle(twilio_event("whatsapp", whatsapp_text("are you there?")))

    assert "<Message>" not in answer["body"]
    assert thread(inbox)[-1] == ("user", "are you there?") and "refused_messages" not in inbox.get()


def test_a_holder_that_died_after_the_ais_last_word_still_hands_off(inbox, monkeypatch):
    import time

    from replies_engine.handlers import stalled_sweeper
    from replies_engine.replies import delivery

    inbox.env(LOCK_TIMEOUT_SECONDS="1")
    inbox.api = Api()
    post(inbox, "can I talk to a human?")
    inbox.deliver("whatsapp")

    class Killed(BaseException):
        pass

    def die(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(delivery, "hand_to_human", die)  # the last word went; the process died
    with pytest.raises(Killed):
        inbox.deliver("ai")
    monkeypatch.undo()
    time.sleep(1.2)

    assert stalled_sweeper({}, None)["reset"] == 1

    record = inbox.get()
    assert record["owner"] == "human" and record["conversation_status"] == "handed_off"
    assert len(inbox.outbox()) == 1 and [n["body"]["kind"] for n in inbox.queued("handoff")] == ["handoff"]


def test_an_operator_reply_that_may_have_gone_is_recorded_and_not_sent_again(inbox):
    from .fakes import TwilioApi

    inbox.env(TWILIO_ACCOUNT_SID="AC" + "1" * 32)
    inbox.api = Api()
    api = TwilioApi(failures=["timeout"])
    inbox.runtime.senders["whatsapp"].http_client = api
    post(inbox, "hello")
    inbox.deliver("whatsapp")  # in the thread

    answer = inbox.api(
        "POST", "/api/conversations/c1/reply", {"text": "Kim here."}, token=token_of(inbox, "kim")
    )

    assert answer.status_code == 502 and "may have been sent" in answer.json()["error"]
    agent = inbox.get()["messages"][-1]
    assert agent["role"] == "agent" and agent["message_id"].startswith("unknown-")
    assert len(api.created) == 1


def test_a_backend_failure_is_a_json_error_not_a_crash(inbox, monkeypatch):
    from replies_engine.ports import TransientStoreError

    def busy(*args, **kwargs):
        raise TransientStoreError("throttled")

    monkeypatch.setattr(inbox.runtime.store, "list", busy)
    answer = inbox.api("GET", "/api/conversations")

    assert answer.status_code == 503 and "busy" in answer.json()["error"]


def test_the_list_says_who_waits_since_when_and_finds_them(inbox):
    post(inbox, "can I talk to a human?")  # the local responder hands off, with a last word
    assert inbox.deliver("whatsapp") == 1 and inbox.deliver("ai") == 1
    assert inbox.get()["messages"][-1]["role"] == "assistant"  # the AI's hand-off line is the last

    [row] = inbox.api("GET", "/api/conversations?owner=human").json()["conversations"]

    asked = inbox.get()["messages"][-2]
    assert row["label"] == "waiting_for_human" and row["unanswered"] == 1
    assert row["waiting_since"] == asked["timestamp"] and row["waiting_seconds"] >= 0
    assert row["person"] == {
        "name": "Zoë",
        "phone": "+4915112345678",
        "bsuid": None,
        "email": "zoe@example.org",
    }
    assert row["channel"] == "whatsapp" and row["window_closes_at"] > asked["timestamp"]
    for words, found in [("zoë", 1), ("+49151", 1), ("zoe@example", 1), ("human", 1), ("nobody", 0)]:
        listed = inbox.api("GET", f"/api/conversations?q={quote(words)}").json()["conversations"]
        assert len(listed) == found, words
    inbox.api("POST", "/api/conversations/c1/reply", {"text": "Sam here."}, token=token_of(inbox, "sam"))
    [row] = inbox.api("GET", "/api/conversations?owner=human").json()["conversations"]
    assert (row["label"], row["unanswered"], row["waiting_seconds"]) == ("agent", 0, None)


def test_a_rule_hand_off_tells_the_person_at_once_once(inbox):
    inbox.put(conversation(auto_queue_reply_message=True))

    first = inbox.handle(twilio_event("whatsapp", whatsapp_text("I have a complaint")))
    second = inbox.handle(twilio_event("whatsapp", whatsapp_text("hello?")))

    told = inbox.runtime.settings.handoff_reply_text
    assert f"<Message>{told}</Message>" in first["body"]
    assert "<Message>" not in second["body"]


def test_an_ai_hand_off_without_a_last_word_still_tells_the_person(inbox, monkeypatch):
    from replies_engine.ports import Handoff

    monkeypatch.setattr(inbox.runtime.responder, "respond", lambda context: Handoff("wants a refund"))
    answered_by_ai(inbox, "I want my money back")

    record = inbox.get()
    assert record["owner"] == "human" and record["handoff_reason"] == "wants a refund"
    assert [entry["body"] for entry in inbox.outbox()] == [inbox.runtime.settings.handoff_reply_text]


def test_a_reply_that_went_but_was_not_recorded_is_not_answered_try_again(inbox, monkeypatch):
    from replies_engine.ports import TransientStoreError

    inbox.put(conversation(auto_queue_reply_message=True))
    post(inbox, "hello?")
    store, write = inbox.runtime.store, inbox.runtime.store.write_unlocked

    def busy_for_replies(conversation_id, *, changes, message=None):
        if message is not None and message.get("role") == "agent":
            raise TransientStoreError("throttled")
        return write(conversation_id, changes=changes, message=message)

    monkeypatch.setattr(store, "write_unlocked", busy_for_replies)
    answer = inbox.api(
        "POST", "/api/conversations/c1/reply", {"text": "Sam here."}, token=token_of(inbox, "sam")
    )

    assert answer.status_code == 200 and answer.json()["message"]["recorded"] is False
    assert [e["body"] for e in inbox.outbox()] == ["Sam here."]
