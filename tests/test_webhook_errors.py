"""Every error code of docs/design.md §4.4 through `webhook_handler`: status, content type, body, and what
was (not) queued. Backend faults are real: a second SQLite connection holding the locks."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from urllib.parse import urlencode

import pytest

from replies_engine.webhook.responses import ERROR_HEADER, ERROR_STATUS, TransientWebhookError, final_response
from replies_engine.webhook.routing import determine_target_queue

from .conftest import conversation
from .payloads import api_event, email_event, email_json, sms_text, twilio_event, whatsapp_text

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def assert_accepted_twiml(response):
    assert response == {"statusCode": 200, "headers": {"Content-Type": "text/xml"}, "body": EMPTY_TWIML}


def assert_empty_twiml(response):
    """A refusal as Twilio gets it: 200 empty TwiML, its code in a header for whoever debugs."""
    assert (response["statusCode"], response["body"]) == (200, EMPTY_TWIML)
    assert response["headers"] == {
        "Content-Type": "text/xml",
        ERROR_HEADER: response["headers"][ERROR_HEADER],
    }
    assert response["headers"][ERROR_HEADER] in ERROR_STATUS


def assert_json_error(response, status, error_code):
    assert response["statusCode"] == status
    assert response["headers"] == {"Content-Type": "application/json"}
    body = json.loads(response["body"])
    assert body["error_code"] == error_code
    assert body["message"]  # says why, for the person reading the provider's logs
    return body


# --- refused by the rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "error_code", "status"),
    [
        ({"project_status": "paused"}, "PROJECT_INACTIVE", 403),
        ({"allowed_channels": ["sms"]}, "CHANNEL_NOT_ALLOWED", 403),
        ({"task_complete": 1}, "CONVERSATION_NOT_FOUND", 404),
        (
            {"gsi_recipient_tel": "+10000000000", "gsi_recipient_email": "x@y.z"},
            "CONVERSATION_NOT_FOUND",
            404,
        ),
    ],
)
def test_rule_refusals(engine, fields, error_code, status):
    engine.put(conversation(**fields))

    assert_empty_twiml(engine.handle(twilio_event("whatsapp", whatsapp_text())))
    assert_json_error(engine.handle(email_event(email_json())), status, error_code)
    assert engine.all_queued() == 0


def test_an_unknown_senders_refusal_names_no_address_and_the_log_masks_them(engine, capsys):
    stranger = {**email_json(), "from": "Nobody <nobody@example.net>"}

    response = engine.handle(email_event(stranger))

    body = assert_json_error(response, 404, "CONVERSATION_NOT_FOUND")
    assert "@" not in body["message"] and "example" not in body["message"]
    logs = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    [refused] = [entry for entry in logs if entry["message"] == "message refused"]
    assert "nobody@example.net" not in refused["reason"] and "n•••@example.net" in refused["reason"]
    assert "support@company.example" not in refused["reason"]


def test_rules_are_checked_in_order(engine):
    engine.put(
        conversation(project_status="closed", allowed_channels=[], conversation_status="processing_reply")
    )

    assert_json_error(engine.handle(email_event(email_json())), 403, "PROJECT_INACTIVE")
    engine.put(conversation(allowed_channels=[], conversation_status="processing_reply"))
    assert_json_error(engine.handle(email_event(email_json())), 403, "CHANNEL_NOT_ALLOWED")


def locked(**fields):
    from replies_engine import clock

    return conversation(conversation_status="processing_reply", processing_started_at=clock.iso(), **fields)


@pytest.mark.delay_mode  # debounce keeps collecting: tests/test_debounce.py
def test_locked_conversation_answers_with_a_message_and_records_what_was_refused(engine):
    engine.env(LOCKED_REPLY_TEXT="One moment <please> & thanks")
    engine.put(locked())
    params = whatsapp_text("are you there?")

    response = engine.handle(twilio_event("whatsapp", params))
    again = engine.handle(twilio_event("whatsapp", params))  # Twilio retried: recorded once

    assert response == again
    assert response["statusCode"] == 200
    assert response["headers"] == {"Content-Type": "text/xml", ERROR_HEADER: "CONVERSATION_LOCKED"}
    assert response["body"] == (
        '<?xml version="1.0" encoding="UTF-8"?><Response>'
        "<Message>One moment &lt;please&gt; &amp; thanks</Message></Response>"
    )
    record = engine.get()
    assert [m["message_id"] for m in record["refused_messages"]] == [params["MessageSid"]]
    assert record["refused_messages"][0]["content"] == "are you there?"
    assert len(record["messages"]) == 1  # not appended to the conversation
    assert engine.all_queued() == 0


@pytest.mark.delay_mode
def test_locked_conversation_on_email_is_409(engine):
    engine.put(locked())

    assert_json_error(engine.handle(email_event(email_json())), 409, "CONVERSATION_LOCKED")
    assert len(engine.get()["refused_messages"]) == 1


@pytest.mark.delay_mode
def test_locked_policy_defer_queues_the_message_for_the_next_batch(engine):
    engine.env(LOCKED_POLICY="defer")
    engine.put(locked())

    assert_accepted_twiml(engine.handle(twilio_event("whatsapp", whatsapp_text())))
    assert len(engine.queued("whatsapp")) == 1
    assert "refused_messages" not in engine.get()


def test_an_expired_lock_does_not_refuse(engine):
    engine.env(LOCK_TIMEOUT_SECONDS="300")
    engine.put(
        conversation(conversation_status="processing_reply", processing_started_at="2026-01-01T00:00:00Z")
    )

    assert_accepted_twiml(engine.handle(twilio_event("whatsapp", whatsapp_text())))
    assert len(engine.queued("whatsapp")) == 1


# --- forged requests --------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["whatsapp", "sms"])
def test_forged_twilio_request_is_403_and_nothing_is_queued(engine, channel):
    params = whatsapp_text() if channel == "whatsapp" else sms_text()
    forged = twilio_event(channel, params, token="f" * 32)
    unsigned = twilio_event(channel, params)
    del unsigned["headers"]["X-Twilio-Signature"]
    tampered = twilio_event(channel, params)
    tampered["body"] = tampered["body"].replace("Body=", "Body=PAY+NOW+", 1)

    for event in (forged, unsigned, tampered):
        assert_json_error(engine.handle(event), 403, "INVALID_SIGNATURE")
    assert engine.all_queued() == 0
    assert engine.runtime.metrics.snapshot()["InvalidSignature"] == 3


@pytest.mark.parametrize("token", ["wrong", None])
def test_email_with_a_wrong_or_missing_token_is_403(engine, token):
    assert_json_error(engine.handle(email_event(email_json(), token=token)), 403, "INVALID_SIGNATURE")
    assert engine.all_queued() == 0


# --- bad input ----------------------------------------------------------------------------------------


def raw_event(path, body, *, method="POST", base64_body=False):
    return api_event(
        path,
        body,
        {"Content-Type": "application/x-www-form-urlencoded"},
        method=method,
        base64_body=base64_body,
    )


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (raw_event("/whatsapp", ""), "empty"),
        (raw_event("/whatsapp", None), "empty"),
        (
            {
                **raw_event("/whatsapp", "x"),
                "body": base64.b64encode(os.urandom(64)).decode(),
                "isBase64Encoded": True,
            },
            "UTF-8",
        ),
        ({**raw_event("/whatsapp", "x"), "body": "%%%not base64%%%", "isBase64Encoded": True}, "base64"),
        (raw_event("/whatsapp", "Body=%FF%FE&From=x"), "UTF-8"),
        (raw_event("/whatsapp", "\udcff garbage"), "UTF-8"),
        (raw_event("/whatsapp", "just some text"), "form-urlencoded"),
        (raw_event("/whatsapp", "Body=" + "a" * 1_048_576), "bytes"),
        (raw_event("/whatsapp", urlencode(whatsapp_text()), method="GET"), "GET"),
    ],
)
def test_bad_twilio_input_is_a_parsing_error_answered_with_empty_twiml(engine, event, reason, capsys):
    assert_empty_twiml(engine.handle(event))
    assert engine.all_queued() == 0
    logs = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    [refused] = [entry for entry in logs if entry["message"] == "message refused"]
    assert refused["error_code"] == "PARSING_ERROR" and reason in refused["reason"]


@pytest.mark.parametrize(
    "event",
    [
        email_event("{not json"),
        email_event("[1, 2]"),
        email_event({"from": ["a"], "to": "b", "message_id": "m"}),
        api_event("/unknown", "Body=hi", {}),
        api_event("/", "Body=hi", {}),
        email_event(email_json(), method="PUT"),
    ],
)
def test_bad_input_elsewhere_is_a_400_parsing_error(engine, event):
    assert_json_error(engine.handle(event), 400, "PARSING_ERROR")
    assert engine.all_queued() == 0


@pytest.mark.parametrize("missing", ["From", "To", "MessageSid"])
def test_missing_twilio_field(engine, missing):
    params = whatsapp_text()
    del params[missing]

    assert_empty_twiml(engine.handle(twilio_event("whatsapp", params)))
    assert engine.all_queued() == 0


@pytest.mark.parametrize("missing", ["from", "to", "message_id"])
def test_missing_email_field(engine, missing):
    message = email_json()
    del message[missing]

    body = assert_json_error(engine.handle(email_event(message)), 400, "MISSING_REQUIRED_FIELD")
    assert missing in body["message"]
    assert engine.all_queued() == 0


def test_the_event_need_not_even_be_a_dict(engine):
    assert_json_error(engine.handle("not an event"), 400, "PARSING_ERROR")


# --- configuration and backend faults ---------------------------------------------------------------


@pytest.mark.sqlite_only
def test_unopenable_database_is_a_configuration_error(engine):
    (engine.path / "a-file").write_text("not a directory")
    engine.env(REPLIES_SQLITE_PATH=str(engine.path / "a-file" / "engine.db"))

    assert_empty_twiml(engine.handle(twilio_event("whatsapp", whatsapp_text())))
    body = assert_json_error(engine.handle(email_event(email_json())), 500, "CONFIGURATION_ERROR")
    assert "a-file" in body["message"] and "cannot open the database" in body["message"]


def test_invalid_setting_is_a_configuration_error_naming_the_variable(engine):
    engine.env(BATCH_DELAY_SECONDS="ten")

    assert_empty_twiml(engine.handle(twilio_event("whatsapp", whatsapp_text())))
    body = assert_json_error(engine.handle(email_event(email_json())), 500, "CONFIGURATION_ERROR")
    assert "BATCH_DELAY_SECONDS" in body["message"]


@pytest.fixture
def other_connection(engine):
    """Another process's connection to the engine's database."""
    engine.runtime.store.get("c1")  # the database exists, in WAL mode
    conn = sqlite3.connect(engine.runtime.settings.sqlite_path, isolation_level=None)
    yield conn
    conn.close()


@pytest.mark.sqlite_only
def test_database_held_exclusively_elsewhere_is_transient_and_twilio_retries(engine, other_connection):
    engine.env()  # a new container, whose first connection meets the lock
    other_connection.execute("PRAGMA locking_mode = EXCLUSIVE")
    other_connection.execute("BEGIN EXCLUSIVE")

    with pytest.raises(TransientWebhookError) as raised:
        engine.handle(twilio_event("whatsapp", whatsapp_text()))
    assert raised.value.error_code == "DB_TRANSIENT_ERROR"
    assert_json_error(engine.handle(email_event(email_json())), 503, "DB_TRANSIENT_ERROR")

    other_connection.close()  # the other process lets go
    assert engine.all_queued() == 0
    assert_accepted_twiml(engine.handle(twilio_event("whatsapp", whatsapp_text())))


@pytest.mark.sqlite_only
def test_queue_write_blocked_by_another_writer_is_transient_and_nothing_is_lost(engine, other_connection):
    params = whatsapp_text()
    other_connection.execute("BEGIN IMMEDIATE")

    with pytest.raises(TransientWebhookError) as raised:
        engine.handle(twilio_event("whatsapp", params))
    assert raised.value.error_code == "QUEUE_TRANSIENT_ERROR"
    assert_json_error(engine.handle(email_event(email_json())), 503, "QUEUE_TRANSIENT_ERROR")

    other_connection.execute("ROLLBACK")
    assert engine.all_queued() == 0
    # Twilio's retry of the same message now goes through
    assert_accepted_twiml(engine.handle(twilio_event("whatsapp", params)))
    assert [q["body"]["message_sid"] for q in engine.queued("whatsapp")] == [params["MessageSid"]]


@pytest.mark.sqlite_only
def test_broken_queue_storage_is_a_queue_error(engine, other_connection):
    other_connection.execute("DROP TABLE queue_messages")

    assert_empty_twiml(engine.handle(twilio_event("whatsapp", whatsapp_text())))
    assert_json_error(engine.handle(email_event(email_json())), 500, "QUEUE_ERROR")


@pytest.mark.sqlite_only
def test_broken_index_is_a_db_query_error(engine, other_connection):
    other_connection.execute('DROP INDEX "gsi-company-whatsapp"')

    assert_empty_twiml(engine.handle(twilio_event("whatsapp", whatsapp_text())))
    assert engine.all_queued() == 0


def test_unexpected_bug_is_caught_by_the_safety_net(engine, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr("replies_engine.webhook.pipeline.determine_target_queue", broken)

    assert_empty_twiml(engine.handle(twilio_event("whatsapp", whatsapp_text())))
    assert_json_error(engine.handle(email_event(email_json())), 500, "INTERNAL_ERROR")
    logs = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    errors = [entry for entry in logs if entry["level"] == "ERROR" and "exception" in entry]
    assert errors and "KeyError: 'a bug'" in errors[0]["exception"]


def test_routing_error_when_no_queue_serves_the_channel(engine):
    assert determine_target_queue({"channel_type": "fax", "from": "+1"}) is None
    assert_empty_twiml(final_response(engine_channel("whatsapp"), "ROUTING_ERROR", "no queue", ""))
    assert_json_error(
        final_response(engine_channel("email"), "ROUTING_ERROR", "no queue", ""), 500, "ROUTING_ERROR"
    )


def engine_channel(name):
    from replies_engine.channels import CHANNELS

    return CHANNELS[name]
