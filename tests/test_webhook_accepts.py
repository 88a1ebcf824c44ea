"""Stage 1 accepts genuine messages: real Twilio and email payloads through `webhook_handler`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from .conftest import conversation
from .payloads import (
    BASE,
    PERSON,
    TOKEN,
    email_event,
    email_json,
    sign,
    sms_text,
    twilio_event,
    whatsapp_location,
    whatsapp_media,
    whatsapp_text,
)

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


@pytest.mark.parametrize(("mode", "delay"), [("debounce", 0), ("delay", 10)])
def test_whatsapp_text_is_answered_with_empty_twiml_and_queued(engine, mode, delay):
    """Debounce queues at once (stage 2 then waits for the pause); delay mode with BATCH_DELAY_SECONDS."""
    engine.env(BATCHING_MODE=mode)
    params = whatsapp_text("Hallo! 👋 Habt ihr morgen Zeit?")

    response = engine.handle(twilio_event("whatsapp", params))

    assert response == {"statusCode": 200, "headers": {"Content-Type": "text/xml"}, "body": EMPTY_TWIML}
    [queued] = engine.queued("whatsapp")
    assert queued["attributes"] == {"conversation_id": "c1", "RetryAttempt": 0}
    assert queued["delay"] == delay
    body = queued["body"]
    assert body["channel_type"] == "whatsapp"
    assert body["body"] == "Hallo! 👋 Habt ihr morgen Zeit?"
    assert body["message_sid"] == params["MessageSid"]
    assert body["account_sid"] == params["AccountSid"]
    assert body["from"] == f"whatsapp:{PERSON}"
    assert body["schema_version"] == 2 and body["kind"] == "message"
    # the provider's other fields, snake-cased, under a key of their own
    fields = body["provider_fields"]
    assert fields["profile_name"] == "Zoë" and fields["wa_id"] == PERSON.lstrip("+")
    assert fields["sms_message_sid"] == params["MessageSid"] and fields["num_segments"] == "1"
    assert "message_sid" not in fields and "wa_id" not in body
    assert body["received_at"].endswith("Z") and len(body["received_at"]) == len(
        "2026-11-24T20:15:03.123456Z"
    )
    # the record's fields are merged in, its growing history is not
    assert body["conversation_id"] == "c1" and body["project_status"] == "active"
    assert "messages" not in body
    assert engine.all_queued() == 1


def test_media_message_keeps_its_media_as_a_list(engine):
    params = whatsapp_media("image/jpeg", caption="")

    assert engine.handle(twilio_event("whatsapp", params))["statusCode"] == 200

    [queued] = engine.queued("whatsapp")
    body = queued["body"]
    assert body["message_sid"].startswith("MM")
    assert body["media"] == [{"url": params["MediaUrl0"], "content_type": "image/jpeg"}]
    assert body["body"] == ""  # a blank Body is a real, signed field
    assert not {"media_url0", "media_content_type0", "num_media"} & body.keys()


def test_location_message_keeps_every_twilio_field(engine):
    engine.handle(twilio_event("whatsapp", whatsapp_location()))

    body = engine.queued("whatsapp")[0]["body"]
    fields = body["provider_fields"]
    assert (fields["latitude"], fields["longitude"]) == ("52.520008", "13.404954")
    assert fields["address"] == "Alexanderplatz, Berlin" and fields["label"] == "Büro"
    assert fields["message_type"] == "location"
    # and read into the engine's own key
    assert body["location"] == {
        "latitude": "52.520008",
        "longitude": "13.404954",
        "address": "Alexanderplatz, Berlin",
        "label": "Büro",
    }


def test_sms_goes_to_the_sms_queue(engine):
    params = sms_text()

    response = engine.handle(twilio_event("sms", params))

    assert response["statusCode"] == 200 and response["body"] == EMPTY_TWIML
    [queued] = engine.queued("sms")
    assert queued["body"]["message_sid"] == params["MessageSid"]
    fields = queued["body"]["provider_fields"]
    assert fields["from_country"] == "DE" and fields["from_zip"] == ""
    assert engine.queued("whatsapp") == []


def test_base64_encoded_body_is_decoded_before_verification(engine):
    event = twilio_event("whatsapp", whatsapp_text("über 🎉"), base64_body=True)

    assert engine.handle(event)["statusCode"] == 200
    assert engine.queued("whatsapp")[0]["body"]["body"] == "über 🎉"


def test_url_is_rebuilt_with_the_stage_when_public_base_url_is_unset(engine):
    engine.env(PUBLIC_BASE_URL="")
    params = whatsapp_text()
    # API Gateway's execute-api host: event["path"] is /whatsapp, Twilio called /prod/whatsapp.
    genuine = twilio_event("whatsapp", params, url="https://hooks.example.com/prod/whatsapp")
    stageless = twilio_event("whatsapp", whatsapp_text(), url="https://hooks.example.com/whatsapp")

    assert engine.handle(genuine)["statusCode"] == 200
    assert engine.handle(stageless)["statusCode"] == 403
    assert [q["body"]["message_sid"] for q in engine.queued("whatsapp")] == [params["MessageSid"]]


def test_signature_header_name_is_case_insensitive(engine):
    event = twilio_event("whatsapp", whatsapp_text())
    event["headers"] = {k.lower(): v for k, v in event["headers"].items()}

    assert engine.handle(event)["statusCode"] == 200


def test_sha256_signature_named_in_the_settings_header_is_accepted(engine):
    params = whatsapp_text()
    url = f"{BASE}/whatsapp"
    payload = url + "".join(k + params[k] for k in sorted(params))
    signature = base64.b64encode(hmac.new(TOKEN.encode(), payload.encode(), hashlib.sha256).digest()).decode()
    event = twilio_event("whatsapp", params)
    event["headers"]["X-Twilio-Signature"] = signature
    event["headers"]["X-Twilio-Webhooks-Signature-Settings"] = (
        "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"
    )

    assert engine.handle(event)["statusCode"] == 200


def test_report_mode_counts_a_bad_signature_and_accepts_the_message(engine):
    engine.env(VERIFY_SIGNATURES="report")

    response = engine.handle(twilio_event("whatsapp", whatsapp_text(), token="f" * 32))

    assert response["statusCode"] == 200
    assert len(engine.queued("whatsapp")) == 1
    assert engine.runtime.metrics.snapshot()["InvalidSignature"] == 1


def test_off_mode_accepts_unsigned_requests_and_warns_at_start(engine, capsys):
    engine.env(VERIFY_SIGNATURES="off")
    event = twilio_event("whatsapp", whatsapp_text())
    del event["headers"]["X-Twilio-Signature"]

    assert engine.handle(event)["statusCode"] == 200
    warnings = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if "VERIFY_SIGNATURES=off" in line
    ]
    assert warnings and warnings[0]["level"] == "WARNING"


def test_email_is_queued_and_answered_with_json(engine):
    message = email_json()

    response = engine.handle(email_event(message))

    assert response["statusCode"] == 200
    assert response["headers"]["Content-Type"] == "application/json"
    assert json.loads(response["body"])["status"] == "queued"
    [queued] = engine.queued("email")
    assert queued["body"]["message_id"] == message["message_id"]
    assert queued["body"]["body"] == message["text"] and queued["body"]["subject"] == message["subject"]
    assert queued["delay"] == 0


def test_email_accepts_basic_auth_with_the_token_as_password(engine):
    event = email_event(email_json(), token=None)
    event["headers"]["Authorization"] = "Basic " + base64.b64encode(b"mailer:email-shared-secret").decode()

    assert engine.handle(event)["statusCode"] == 200


def test_email_auth_off_takes_email_unauthenticated_for_local_experiments(engine, capsys):
    engine.env(EMAIL_WEBHOOK_TOKEN="", EMAIL_AUTH="off")

    assert engine.handle(email_event(email_json(), token=None))["statusCode"] == 200
    assert "EMAIL_AUTH=off" in capsys.readouterr().err  # warned at start


@pytest.mark.parametrize(
    ("fields", "env", "queue"),
    [
        ({"auto_queue_reply_message": True}, {}, "handoff"),
        ({"auto_queue_reply_message_from_number": [PERSON]}, {}, "handoff"),
        ({"auto_queue_reply_message_from_number": ["+10000000000"]}, {}, "whatsapp"),
        ({"hand_off_to_human": True}, {}, "whatsapp"),  # as in the seed: off unless asked for
        ({"hand_off_to_human": True}, {"HONOR_HAND_OFF_TO_HUMAN": "true"}, "handoff"),
        ({"auto_queue_reply_message": False, "hand_off_to_human": False}, {}, "whatsapp"),
    ],
)
def test_handoff_routing(engine, fields, env, queue):
    engine.env(**env)
    engine.put(conversation(**fields))

    assert engine.handle(twilio_event("whatsapp", whatsapp_text()))["statusCode"] == 200

    [queued] = engine.queued(queue)
    assert queued["delay"] == 0  # debounce: at once, stage 2 waits for the pause
    assert queued["attributes"]["conversation_id"] == "c1"
    assert engine.all_queued() == 1


def test_email_sender_listed_with_any_spelling_goes_to_handoff(engine):
    engine.put(conversation(auto_queue_reply_message_from_email=["ZOE@example.org"]))

    engine.handle(email_event(email_json()))

    assert len(engine.queued("handoff")) == 1 and engine.queued("email") == []


def test_newest_active_conversation_wins_and_inactive_ones_are_ignored(engine, capsys):
    engine.put(
        conversation("old", created_at="2026-03-01T00:00:00.000000Z"),
        conversation("newest", created_at="2026-06-01T00:00:00.000000Z"),
        conversation("done", created_at="2026-09-01T00:00:00.000000Z", task_complete=1),
    )

    engine.handle(twilio_event("whatsapp", whatsapp_text()))

    assert engine.queued("whatsapp")[0]["attributes"]["conversation_id"] == "newest"
    logs = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    [warning] = [entry for entry in logs if entry["message"].startswith("several active conversations")]
    assert warning["conversation_id"] == "newest"
    assert sorted(warning["candidates"]) == ["c1", "newest", "old"]


def test_log_lines_carry_the_correlation_fields(engine, capsys):
    params = whatsapp_text()

    engine.handle(twilio_event("whatsapp", params))

    logs = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    [accepted] = [entry for entry in logs if entry["message"] == "message accepted"]
    assert accepted["level"] == "INFO"
    assert accepted["conversation_id"] == "c1" and accepted["message_sid"] == params["MessageSid"]
    assert accepted["queue"] == "whatsapp"


def test_signed_url_with_query_string(engine):
    engine.env(PUBLIC_BASE_URL="")
    params = whatsapp_text()
    event = twilio_event("whatsapp", params, url="https://hooks.example.com/prod/whatsapp?tenant=acme")
    event["queryStringParameters"] = {"tenant": "acme"}
    event["multiValueQueryStringParameters"] = {"tenant": ["acme"]}

    assert engine.handle(event)["statusCode"] == 200
    assert sign("https://hooks.example.com/prod/whatsapp", params) != event["headers"]["X-Twilio-Signature"]
