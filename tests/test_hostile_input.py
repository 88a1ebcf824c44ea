"""Hostile or broken input on both backends: one bad record fails alone, provider fields cannot pose as
the engine's own, every refusal is a clear 4xx; and a short run of `bench/fuzz.py`'s generated cases."""

from __future__ import annotations

import json
import time

import pytest
from bench.fuzz import FAULTS, QUEUES, Fuzz, cases, seed

from replies_engine import clock
from replies_engine.handlers import batch_processor, reply_sender
from replies_engine.local.workers import sqs_event
from replies_engine.ports import QueuedMessage
from replies_engine.webhook.responses import EMPTY_TWIML

from .payloads import api_event, email_event, email_json, twilio_event, whatsapp_text

DEEP = "[" * 10_000 + "]" * 10_000


def record(body: object, message_id: str, **fields: object) -> dict:
    """An SQS record as Lambda delivers it from a batch queue."""
    now = time.time()
    message = QueuedMessage(
        message_id, "whatsapp", json.dumps(body), {"RetryAttempt": 0}, now, now, 1, f"rh-{message_id}"
    )
    return {**sqs_event("whatsapp", [message])["Records"][0], **fields}


def envelope(message_sid: str, **fields: object) -> dict:
    return {
        "schema_version": 2,
        "kind": "message",
        "conversation_id": "c1",
        "channel_type": "whatsapp",
        "from": "whatsapp:+4915112345678",
        "to": "whatsapp:+14155238886",
        "body": f"text of {message_sid}",
        "message_sid": message_sid,
        "received_at": clock.iso(),
        **fields,
    }


def stored(engine) -> list[str]:
    """The person's messages in the conversation, pending ones included (debounce)."""
    record = engine.get()
    pending = record.get("pending_messages", [])
    return [m["message_id"] for m in record["messages"] + pending if m["role"] == "user"]


# --- one bad record fails alone -------------------------------------------------------------------------


def test_malformed_batch_records_fail_alone_and_the_good_one_is_appended(engine):
    records = [
        record(envelope("SMgood"), "good"),
        "not a record",
        record(envelope("SMattrs"), "attrs", messageAttributes=["RetryAttempt"]),
        record(envelope("SMtype", conversation_id=5), "type"),
        record(envelope("SMmedia", media="https://evil.example/x"), "media"),
        record(envelope("SMstamp", received_at="yesterday"), "stamp"),
        {"body": json.dumps(envelope("SMnoid"))},  # no messageId: not from SQS, nothing to report
    ]

    result = batch_processor({"Records": records}, None)

    assert sorted(f["itemIdentifier"] for f in result["batchItemFailures"]) == [
        "attrs",
        "media",
        "stamp",
        "type",
    ]
    assert stored(engine) == ["SMgood"]
    assert engine.metric("UnreadableRecord") == 6


def test_malformed_ai_queue_records_fail_alone(engine):
    context = {"conversation_id": "c1", "batch_id": "batch-x", "channel_type": "whatsapp", "messages": [{}]}
    records = [
        "not a record",
        record({**context, "history": [], "conversation": {}, "reply_address": {}}, "stale"),
        record(context, "no-history"),
        record({**context, "messages": "all"}, "wrong-type", attributes=["ApproximateReceiveCount"]),
        record(
            {**context, "history": [], "conversation": {}, "reply_address": {}, "discarded_usage": 12},
            "usage",
        ),
    ]

    result = reply_sender({"Records": records}, None)

    # the readable one's batch does not hold the lock: acknowledged, nothing sent
    failed = sorted(f["itemIdentifier"] for f in result["batchItemFailures"])
    assert failed == ["no-history", "usage", "wrong-type"]
    assert engine.outbox() == []


@pytest.mark.parametrize("timestamp", ["yesterday", None, 1733356800])
def test_a_pending_message_that_cannot_be_ordered_is_dead_lettered_and_the_next_one_answered(
    engine, timestamp
):
    poison = {
        "message_id": "SMold",
        "role": "user",
        "content": "from an older engine",
        "timestamp": timestamp,
    }
    engine.put({**engine.get(), "messages": [], "pending_messages": [poison], "pending_version": 1})
    engine.env(BATCHING_MODE="debounce", QUIET_SECONDS="1", BATCH_WINDOW_SECONDS="0")
    params = whatsapp_text("Is Friday still possible?")
    engine.handle(twilio_event("whatsapp", params))

    deadline = time.monotonic() + 10
    while not engine.queued("ai") and time.monotonic() < deadline:
        engine.deliver("whatsapp", wait_seconds=0.5)

    [ai] = engine.queued("ai")
    assert [m["message_id"] for m in ai["body"]["messages"]] == [params["MessageSid"]]
    [dead] = engine.queued("whatsapp-dlq")
    assert dead["body"] == {"conversation_id": "c1", "unreadable_pending_message": poison}
    assert "is not a time stage 1 writes" in dead["attributes"]["DeadLetterReason"]
    assert engine.get()["pending_messages"] == []


def test_a_version_1_body_in_flight_during_a_deploy_is_read(engine):
    """Version 1 spread Twilio's fields, snake-cased, beside the engine's keys."""
    flat = {**envelope("SMv1", kind="flush"), "latitude": "52.52", "longitude": "13.40", "wa_id": "49151"}
    del flat["schema_version"]  # a v1 message's `kind` was a provider's field: it is a message
    token = {"kind": "flush", "conversation_id": "c1", "channel_type": "whatsapp"}

    result = batch_processor({"Records": [record(flat, "v1"), record(token, "token")]}, None)

    assert result == {"batchItemFailures": []}
    [message] = [m for m in engine.get()["messages"] if m["message_id"] == "SMv1"]
    assert message["content"] == "text of SMv1"
    assert message["location"] == {"latitude": "52.52", "longitude": "13.40"} and "wa_id" not in message


# --- provider fields cannot pose as the engine's own ----------------------------------------------------


@pytest.mark.parametrize("mode", ["debounce", "delay"])
def test_form_fields_named_like_the_engines_keys_stay_the_providers(engine, mode):
    engine.env(BATCHING_MODE=mode, QUIET_SECONDS="0", BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0")
    params = whatsapp_text(
        "Hallo", Kind="flush", Media="https://evil.example/x", ConversationId="c2", SchemaVersion="9"
    )

    assert engine.handle(twilio_event("whatsapp", params))["body"] == EMPTY_TWIML
    [queued] = engine.queued("whatsapp")
    assert queued["body"]["kind"] == "message" and queued["body"]["schema_version"] == 2
    assert queued["body"]["provider_fields"]["kind"] == "flush"
    assert queued["body"]["provider_fields"]["media"] == "https://evil.example/x"
    deadline = time.monotonic() + 10
    while params["MessageSid"] not in stored(engine) and time.monotonic() < deadline:
        engine.deliver("whatsapp", wait_seconds=0.2)

    [message] = [m for m in engine.get()["messages"] if m["message_id"] == params["MessageSid"]]
    assert message["content"] == "Hallo" and "media" not in message  # nothing for the engine to fetch
    assert engine.get("c2") is None  # no conversation was named by a form field


# --- every refusal a clear 4xx ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        email_event(DEEP),
        email_event('{"text": ' * 5_000 + '""' + "}" * 5_000),
        api_event("/email/postmark", DEEP, {"Content-Type": "application/json", "X-Webhook-Token": "x"}),
        {**email_event(email_json()), "headers": [["X-Webhook-Token", "email-shared-secret"]]},
        {**email_event(email_json()), "multiValueHeaders": {"x-webhook-token": "email-shared-secret"}},
        {**email_event(email_json()), "queryStringParameters": ["a"]},
        email_event(email_json(attachments=[{"name": "x.pdf"}, "y.pdf"])),
        email_event('{"text": 1' + "0" * 5_000 + "}"),  # more digits than Python converts
    ],
    ids=[
        "deep-array",
        "deep-object",
        "postmark-deep",
        "headers-list",
        "multivalue-string",
        "query-list",
        "attachment-string",
        "huge-integer",
    ],
)
def test_broken_email_requests_are_parsing_errors(engine, event):
    engine.env(EMAIL_WEBHOOK_TOKEN="email-shared-secret")

    answer = engine.handle(event)

    assert answer["statusCode"] == 400
    assert json.loads(answer["body"])["error_code"] == "PARSING_ERROR"
    assert engine.all_queued() == 0


def test_a_deep_json_body_to_a_twilio_channel_is_a_parsing_error_answered_with_twiml(engine, caplog):
    event = api_event("/whatsapp", DEEP, {"Content-Type": "application/json", "X-Twilio-Signature": "x"})

    answer = engine.handle(event)

    assert (answer["statusCode"], answer["body"]) == (200, EMPTY_TWIML)
    [refusal] = [r for r in caplog.records if r.getMessage() == "message refused"]
    assert refusal.error_code == "PARSING_ERROR" and "levels deep" in refusal.reason


def test_an_emails_attachments_keep_their_type(engine):
    attachment = {"name": "invoice.pdf", "type": "application/pdf", "size": 120_000}

    assert engine.handle(email_event(email_json(attachments=[attachment])))["statusCode"] == 200

    queued = engine.queued("email")[0]["body"]
    assert queued["attachments"] == [
        {"name": "invoice.pdf", "content_type": "application/pdf", "size": 120_000}
    ]


# --- generated cases ---------------------------------------------------------------------------------


def test_generated_requests_and_records_escape_nothing_and_lose_nothing(engine, backend):
    """`bench/fuzz.py` in short (derandomized: the same cases every run); its long run is in docs/benchmarks.md."""
    engine.env(MAILGUN_SIGNING_KEY="mailgun-signing-key")
    seed(engine.put)
    every = [*QUEUES, *(f"{q}-dlq" for q in QUEUES)]
    fuzz = Fuzz(engine.all_queued, lambda: [m["body"] for q in every for m in engine.queued(q)], strict=True)
    webhooks, records = (400, 200) if backend == "sqlite" else (80, 40)
    try:
        cases(fuzz, webhooks, records, derandomize=True)
        counts = fuzz.verdict()
    finally:
        fuzz.close()

    assert {k: counts[k] for k in FAULTS} == dict.fromkeys(FAULTS, 0)
    assert counts["webhooks"] == webhooks and counts["batch records"] >= records
    assert fuzz.acknowledged  # the generator reaches the happy path too
