"""Holes found in review, each proven closed through the public entry points."""

from __future__ import annotations

import json
import sqlite3

import pytest

from replies_engine import clock
from replies_engine.handlers import reply_sender
from replies_engine.local.workers import sqs_event
from replies_engine.ports import TransientSendError, TransientStoreError
from replies_engine.webhook.parsing import create_context_object
from replies_engine.webhook.responses import TransientWebhookError

from .conftest import conversation
from .payloads import PERSON, email_event, email_json, twilio_event, whatsapp_text
from .processes import cli


def test_an_email_cannot_pose_as_record_fields(engine):
    engine.put(conversation("victim", gsi_recipient_email="someone@else.example"))
    engine.put(conversation(project_status="paused"))
    forged = email_json(conversation_id="victim", project_status="active", allowed_channels=["email"])

    response = engine.handle(email_event(forged))

    assert response["statusCode"] == 403 and json.loads(response["body"])["error_code"] == "PROJECT_INACTIVE"
    assert engine.all_queued() == 0 and len(engine.get("victim")["messages"]) == 1


def test_the_record_wins_over_provider_fields_but_not_over_the_message(engine):
    engine.put(conversation(body="not the message", project_status="active"))
    params = whatsapp_text("the message", ProjectStatus="paused")

    engine.handle(twilio_event("whatsapp", params))

    [queued] = engine.queued("whatsapp")
    assert queued["body"]["body"] == "the message" and queued["body"]["project_status"] == "active"


def test_an_email_to_several_addresses_finds_the_conversation(engine):
    message = email_json(to="Sales <sales@company.example>, support@company.example")

    assert engine.handle(email_event(message))["statusCode"] == 200
    assert len(engine.queued("email")) == 1


def test_an_email_with_a_lone_surrogate_is_a_parsing_error(engine):
    body = json.dumps(email_json()).replace('"text": "', '"text": "\\ud800', 1)

    response = engine.handle(email_event(body))

    assert response["statusCode"] == 400 and json.loads(response["body"])["error_code"] == "PARSING_ERROR"


def test_a_malformed_event_is_a_parsing_error_not_a_crash(engine):
    response = engine.handle({"requestContext": "nonsense", "httpMethod": "POST", "body": "x"})

    assert response["statusCode"] == 400 and json.loads(response["body"])["error_code"] == "PARSING_ERROR"


def test_a_handoff_number_written_without_its_list_still_hands_off(engine):
    engine.put(conversation(auto_queue_reply_message_from_number=PERSON))

    engine.handle(twilio_event("whatsapp", whatsapp_text()))

    assert len(engine.queued("handoff")) == 1


@pytest.mark.sqlite_only
def test_a_busy_database_while_reading_the_local_token_makes_twilio_retry(engine):
    engine.env(TWILIO_AUTH_TOKEN="")
    engine.runtime.store.get("c1")
    other = sqlite3.connect(engine.runtime.settings.sqlite_path, isolation_level=None)
    try:
        engine.env()  # a fresh container: its first token read meets the other writer
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(TransientWebhookError) as raised:
            engine.handle(twilio_event("whatsapp", whatsapp_text()))
        assert raised.value.error_code == "DB_TRANSIENT_ERROR"
    finally:
        other.close()


def test_create_context_object_is_none_for_garbage_and_a_context_for_a_webhook():
    assert create_context_object({"httpMethod": "POST", "path": "/whatsapp", "body": "%%%"}) is None
    context = create_context_object(
        {"httpMethod": "POST", "path": "/prod/sms", "body": "From=%2B1&To=%2B2&Body="}
    )
    assert context["channel_type"] == "sms" and context["from"] == "+1" and context["body"] == ""


def test_queues_stats_accepts_json(engine_env):
    assert cli(engine_env, "queues", "stats", "--json").returncode == 0
    assert cli(engine_env, "--json", "outbox", "list").returncode == 0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATCHING_MODE", "later"),
        ("SUPERSEDE", "maybe"),
        ("QUIET_SECONDS", "-1"),
        ("LOCKED_POLICY", "defer"),  # nothing to defer in debounce mode, the default
    ],
)
def test_a_bad_batching_setting_is_refused_clearly(engine, variable, value):
    engine.env(**{variable: value})

    response = engine.handle(email_event(email_json()))

    assert json.loads(response["body"])["error_code"] == "CONFIGURATION_ERROR"
    assert variable in json.loads(response["body"])["message"]


# --- the reply stage --------------------------------------------------------------------------------------


@pytest.fixture
def ai_record(engine):
    engine.env(BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0")
    engine.handle(twilio_event("whatsapp", whatsapp_text("hello")))
    engine.deliver("whatsapp")
    [record] = engine.runtime.queue.receive("ai")
    return record


def test_a_sent_reply_is_acknowledged_even_when_the_unlock_fails(engine, ai_record, monkeypatch):
    def busy(*args, **kwargs):
        raise TransientStoreError("database is locked")

    monkeypatch.setattr(engine.runtime.store, "release_lock", busy)

    assert reply_sender(sqs_event("ai", [ai_record]), None) == {"batchItemFailures": []}
    assert len(engine.outbox()) == 1  # sent once; the lease and the sweeper free the lock


def test_a_lock_lost_while_the_responder_thinks_means_no_stale_reply(engine, ai_record, monkeypatch):
    respond = engine.runtime.responder.respond

    def slow(context):
        record = engine.get()
        record.update(lock_owner="batch-newer", processing_started_at=clock.iso())
        engine.put(record)  # meanwhile the lease ran out and a newer batch took the lock
        return respond(context)

    monkeypatch.setattr(engine.runtime.responder, "respond", slow)

    assert reply_sender(sqs_event("ai", [ai_record]), None) == {"batchItemFailures": []}
    assert engine.outbox() == [] and engine.get()["lock_owner"] == "batch-newer"


def test_a_send_that_fails_for_now_is_retried_with_the_lock_kept(engine, ai_record, monkeypatch):
    sender = engine.runtime.senders["whatsapp"]
    send = sender.send

    def unavailable(*args):
        raise TransientSendError("Twilio answered 503")

    monkeypatch.setattr(sender, "send", unavailable)
    assert reply_sender(sqs_event("ai", [ai_record]), None) == {
        "batchItemFailures": [{"itemIdentifier": ai_record.message_id}]
    }
    assert engine.get()["conversation_status"] == "processing_reply"

    monkeypatch.setattr(sender, "send", send)
    assert reply_sender(sqs_event("ai", [ai_record]), None) == {"batchItemFailures": []}
    assert len(engine.outbox()) == 1 and engine.get()["conversation_status"] == "ai_response_sent"


@pytest.mark.delay_mode
def test_supersede_drop_in_delay_mode_is_refused_clearly(engine):
    engine.env(SUPERSEDE="drop")

    body = json.loads(engine.handle(email_event(email_json()))["body"])

    assert body["error_code"] == "CONFIGURATION_ERROR" and "SUPERSEDE=drop does nothing" in body["message"]
