"""A person's data is theirs, on both backends: everything held about them exported; erased on request
(idempotent, finishing after a crash); afterwards nothing of theirs is found in the tables, the
embedded database's files, its queues, dead-letter queues and outbox; what SQS still holds is
discarded on sight; a message from them afterwards is one from an unknown sender."""

from __future__ import annotations

import json

import pytest

from replies_engine import decisions, people
from replies_engine.local.cli import main

from .conftest import conversation
from .payloads import PERSON, email_event, email_json, twilio_event, whatsapp_text

EMAIL = "zoe@example.org"
WHATSAPP_TEXT = "Habt ihr morgen Zeit? Ich bin Zoë aus Köln"
EMAIL_TEXT = "Hello, can we talk tomorrow? My new number is private"
QUEUED_TEXT = "Noch eine Frage zur Rechnung 4711"
THEIRS = (PERSON, PERSON[1:], EMAIL, WHATSAPP_TEXT, EMAIL_TEXT, QUEUED_TEXT, "Zoë")


@pytest.fixture
def person(engine):
    """Zoë with two conversations, a WhatsApp one and an email one, each answered; one more WhatsApp
    message still queued, and one dead-lettered."""
    whatsapp = conversation("c1")
    email = conversation("c2", allowed_channels=["email"])
    for record, others in (
        (whatsapp, ("gsi_recipient_email", "gsi_company_email")),
        (email, ("gsi_recipient_tel", "gsi_company_whatsapp_number", "gsi_company_sms_number")),
    ):
        for key in others:
            del record[key]
    engine.put(whatsapp, email)
    assert engine.handle(twilio_event("whatsapp", whatsapp_text(WHATSAPP_TEXT)))["statusCode"] == 200
    assert engine.handle(email_event(email_json(EMAIL_TEXT)))["statusCode"] == 200
    engine.deliver("whatsapp")
    engine.deliver("email")
    engine.deliver("ai")
    assert engine.handle(twilio_event("whatsapp", whatsapp_text(QUEUED_TEXT)))["statusCode"] == 200
    [queued] = engine.queued("whatsapp")
    engine.runtime.queue.send("whatsapp-dlq", json.dumps(queued["body"], ensure_ascii=False))
    return engine


def found_anywhere(engine) -> list[str]:
    """Which of their data a search of every table, file, queue and outbox finds."""
    if engine.stack:
        dynamodb, stack = engine.stack.dynamodb, engine.stack
        held = [
            json.dumps(dynamodb.scan(TableName=stack.refs[t])["Items"], ensure_ascii=False)
            for t in ("ConversationsTable", "MessagesTable")
        ]
    else:
        held = [p.read_bytes().decode("utf-8", "replace") for p in engine.path.glob("engine.db*")]
        held.append(json.dumps([engine.queued(q) for q in ("whatsapp", "email", "ai", "handoff")]))
        held.append(json.dumps(engine.outbox(), ensure_ascii=False))
    return [words for words in THEIRS if any(words in text for text in held)]


def test_an_export_holds_everything_about_them(person):
    by_phone = people.export(person.runtime, PERSON)
    by_email = people.export(person.runtime, "Zoë Example <Zoe@Example.org>")

    [c1] = by_phone["conversations"]
    assert c1["conversation_id"] == "c1" and c1["gsi_recipient_tel"] == PERSON
    contents = [m["content"] for m in c1["messages"]]
    assert WHATSAPP_TEXT in contents and any(m["role"] == "assistant" for m in c1["messages"][1:])
    [c2] = by_email["conversations"]
    assert EMAIL_TEXT in [m["content"] for m in c2["messages"]]
    if person.stack:  # SQS cannot be read without taking the messages
        assert by_phone["queued"] is None and by_phone["outbox"] is None
    else:
        assert sorted(q["queue"] for q in by_phone["queued"]) == ["whatsapp", "whatsapp-dlq"]
        assert all(q["body"]["body"] == QUEUED_TEXT for q in by_phone["queued"])
        [reply] = by_phone["outbox"]
        assert reply["conversation_id"] == "c1"


def test_after_erasure_nothing_of_theirs_is_found_and_the_ids_stay(person):
    assert found_anywhere(person)  # the search finds them before

    by_phone = people.erase(person.runtime, f"whatsapp:{PERSON}")
    by_email = people.erase(person.runtime, EMAIL)

    assert by_phone["conversations"] == 1 and by_phone["messages"] >= 3
    assert by_email == {**by_email, "conversations": 1}
    assert by_phone["queued"] == (0 if person.stack else 2)  # the queued and the dead-lettered message
    for conversation_id in ("c1", "c2"):  # the company's systems still know the conversation by its id
        record = person.get(conversation_id)
        assert record["erased_at"] and record["messages"] == []
        assert not {"gsi_recipient_tel", "gsi_recipient_email", "profile_name"} & set(record)
    if person.stack:  # what SQS still holds is discarded on sight, never written back
        person.deliver("whatsapp")
        assert person.metric("ErasedMessagesDiscarded") >= 1
    assert found_anywhere(person) == []
    assert people.erase(person.runtime, PERSON) == {
        "conversations": 0,
        "messages": 0,
        "queued": 0,
        "outbox": 0,
    }


def test_a_message_from_them_afterwards_is_from_an_unknown_sender(person):
    people.erase(person.runtime, PERSON)

    answer = person.handle(twilio_event("whatsapp", whatsapp_text("Hallo, ich bin es wieder")))

    assert answer["statusCode"] == 200
    assert answer["headers"]["X-Replies-Error-Code"] == "CONVERSATION_NOT_FOUND"
    assert person.get("c1")["messages"] == []


def test_an_erasure_killed_half_way_is_finished_by_the_next_run(person, monkeypatch):
    def killed(record, now):
        raise KeyboardInterrupt  # the process stops here

    monkeypatch.setattr(decisions, "tombstone", killed)
    with pytest.raises(KeyboardInterrupt):
        people.erase(person.runtime, PERSON)
    monkeypatch.undo()

    assert people.erase(person.runtime, PERSON)["conversations"] == 1  # still found by the address
    people.erase(person.runtime, EMAIL)
    if person.stack:
        person.deliver("whatsapp")
    assert found_anywhere(person) == []


def test_a_dry_run_counts_and_erases_nothing(person):
    counted = people.erase(person.runtime, PERSON, dry_run=True)

    assert counted["dry_run"] and counted["conversations"] == 1 and counted["messages"] >= 3
    assert person.get("c1")["gsi_recipient_tel"] == PERSON


@pytest.mark.sqlite_only
def test_the_command_line_exports_and_erases(person, capsys):
    assert main(["people", "export", PERSON]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["conversations"][0]["conversation_id"] == "c1"

    assert main(["people", "erase", PERSON]) == 0
    assert json.loads(capsys.readouterr().out)["conversations"] == 1

    assert main(["people", "export", "not an address"]) == 2
    assert "expected a phone number" in capsys.readouterr().err


def test_admins_export_and_erase_through_the_api_and_it_is_audited(person, caplog):
    from .test_handoff import token_of
    from .test_operators import call

    person.env(OPERATOR_TOKEN="x" * 32)
    agent, admin = token_of(person, "sam"), token_of(person, "ada", role="admin")
    path = "/api/people/%2B4915112345678"

    assert call("GET", path, token=agent).status_code == 403
    exported = call("GET", path, token=admin).json()
    assert exported["conversations"][0]["conversation_id"] == "c1"
    assert call("POST", f"{path}/erase?dry_run=1", token=admin, body={}).json()["dry_run"] is True
    assert call("POST", f"{path}/erase", token=agent, body={}).status_code == 403
    assert call("POST", f"{path}/erase", token=admin, body={}).json()["conversations"] == 1
    assert call("GET", "/api/people/nobody", token=admin).status_code == 400

    audited = {r.getMessage(): r for r in caplog.records if r.getMessage().startswith("person ")}
    assert audited["person erased"].by == "ada" and audited["person exported"].by == "ada"
    assert person.get("c1")["erased_at"]


def test_nothing_is_written_back_to_an_erased_conversation(person):
    people.erase(person.runtime, PERSON)
    late = {
        "message_id": "SMlate",
        "role": "user",
        "content": "noch da?",
        "timestamp": "2026-12-05T10:00:00Z",
    }

    assert (
        person.runtime.store.write_unlocked(
            "c1", changes={"last_inbound_at": late["timestamp"]}, message=late
        )
        is False
    )
    assert person.runtime.store.record_refused_message("c1", late) is False
    assert person.get("c1")["messages"] == [] and "last_inbound_at" not in person.get("c1")
