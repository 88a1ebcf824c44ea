"""Logs without contents: by default no line the engine writes carries what a person wrote or a full
address; `LOG_PERSONAL_DATA=on` keeps them, and says so at start. (Every test's log lines are also
scanned for the fixtures' personal data: `conftest.no_personal_data_in_logs`.)"""

from __future__ import annotations

import json
import logging

import pytest

from replies_engine.observability import JsonFormatter, mask

from .payloads import PERSON, api_event, twilio_event, whatsapp_text


def lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]


def formatted(personal_data: bool = False, **extra) -> dict:
    record = logging.LogRecord("replies_engine.test", logging.WARNING, __file__, 1, "%s", ("a line",), None)
    record.__dict__.update(extra)
    return json.loads(JsonFormatter(personal_data).format(record))


def test_addresses_are_masked_wherever_they_are_and_words_are_counted_not_kept():
    line = formatted(
        reason="no conversation between whatsapp:+14155238886 and zoe@example.org (WaId 4915112345678)",
        body="Hallo! Habt ihr morgen Zeit?",
        context={"messages": [{"content": "Freitag passt", "from": PERSON}]},
        conversation_id="c1",
        message_sid="SM00000000000000000000001234567890",
        created_at="2026-12-05T08:05:46.249000Z",
    )

    assert line["reason"] == (
        "no conversation between whatsapp:+14155•••886 and z•••@example.org (WaId 491511•••678)"
    )
    assert line["body"] == "[28 characters]"
    assert line["context"] == {"messages": [{"content": "[13 characters]", "from": "+49151•••678"}]}
    # what correlates lines is kept: ids, times
    assert line["conversation_id"] == "c1" and line["message_sid"] == "SM00000000000000000000001234567890"
    assert line["created_at"] == "2026-12-05T08:05:46.249000Z"


def test_a_traceback_is_masked_too():
    try:
        raise ValueError("cannot reach zoe@example.org")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "replies_engine.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = json.loads(JsonFormatter().format(record))

    assert "zoe@example.org" not in line["exception"] and "z•••@example.org" in line["exception"]


def test_mask_keeps_enough_to_tell_people_apart():
    assert mask("+4915112345678") == "+49151•••678"
    assert mask("zoe@example.org") == "z•••@example.org"
    assert mask("12345") == "•••"


def test_a_refused_message_is_logged_without_the_persons_number_or_words(engine, capsys):
    capsys.readouterr()
    stranger = whatsapp_text("Habt ihr morgen Zeit?", To="whatsapp:+14155550000")  # no conversation

    assert engine.handle(twilio_event("whatsapp", stranger))["statusCode"] == 200

    logged = json.dumps(lines(capsys), ensure_ascii=False)
    assert "message refused" in logged and "+49151•••678" in logged
    assert PERSON not in logged and PERSON[1:] not in logged and "morgen Zeit" not in logged


def test_log_personal_data_on_keeps_them_and_warns_at_start(engine, capsys, monkeypatch):
    # the command line quiets start-up warnings for its own process: not here
    monkeypatch.setattr(logging.getLogger("replies_engine.bootstrap"), "level", logging.NOTSET)
    engine.env(LOG_PERSONAL_DATA="on")
    engine.runtime  # noqa: B018 - built from the environment, as a new container would
    [warning] = [line for line in lines(capsys) if "LOG_PERSONAL_DATA" in line["message"]]
    assert warning["level"] == "WARNING"

    line = formatted(personal_data=True, reason=f"from {PERSON}", body="Freitag passt")
    assert line["reason"] == f"from {PERSON}" and line["body"] == "Freitag passt"


def test_a_bad_log_personal_data_value_is_a_configuration_error(engine):
    from replies_engine.config import ConfigurationError, Settings

    with pytest.raises(ConfigurationError, match="LOG_PERSONAL_DATA"):
        Settings.from_env({"LOG_PERSONAL_DATA": "yes please"})


def test_an_api_event_with_a_persons_address_in_the_path_logs_it_masked(engine, capsys):
    capsys.readouterr()
    engine.handle(api_event("/nowhere/+4915112345678", "x=1"))

    logged = json.dumps(lines(capsys), ensure_ascii=False)
    assert PERSON not in logged


def test_a_percent_encoded_address_and_a_bsuid_are_masked_too():
    line = formatted(action="/api/people/%2B4915112345678/erase", person="whatsapp:US.13491208655302741918")

    assert line["action"] == "/api/people/+49151•••678/erase"
    assert line["person"] == "whatsapp:US.134•••918"
