"""WhatsApp usernames: a person who adopts one may have their phone number withheld, and Twilio then
names them by their business-scoped user ID (BSUID) in `From` and `ExternalUserId`. Their messages
find their conversation by BSUID (an index on both backends), a message that carries both teaches the
conversation the BSUID, and replies and delivery callbacks work for a BSUID-only person."""

from __future__ import annotations

import json
import sqlite3

import pytest

from replies_engine.adapters.sqlite import Database, SqliteConversationStore
from replies_engine.channels import BSUID_GSI

from .conftest import conversation
from .fakes import TwilioApi
from .payloads import COMPANY, twilio_event, whatsapp_text
from .processes import cli
from .test_channel_rules import created, reply_stage, status

BSUID = "US.13491208655302741918"
PARENT = "US.ENT.118157006298452"


def username_only(text: str = "Hi, it's me") -> dict[str, str]:
    """Twilio's webhook for a person whose number WhatsApp withholds: the BSUID in From, no WaId."""
    params = whatsapp_text(text)
    del params["WaId"]
    params.update(
        From=f"whatsapp:{BSUID}",
        ExternalUserId=f"whatsapp:{BSUID}",
        ParentExternalUserId=f"whatsapp:{PARENT}",
        ProfileUsername="zoe.example",
    )
    return params


@pytest.fixture
def person(engine):
    """A conversation that knows only the person's BSUID, with replies through Twilio (a fake API)."""
    engine.env(TWILIO_ACCOUNT_SID="AC" + "1" * 32, BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0")
    engine.api = TwilioApi()
    engine.runtime.senders["whatsapp"].http_client = engine.api
    record = conversation(recipient_bsuid=BSUID)
    del record["gsi_recipient_tel"]
    engine.put(record)
    return engine


def test_a_username_only_message_finds_its_conversation_and_is_answered_by_bsuid(person):
    params = username_only()

    assert person.handle(twilio_event("whatsapp", params))["statusCode"] == 200
    assert person.deliver("whatsapp") == 1
    [ai] = person.runtime.queue.receive("ai")
    assert reply_stage(ai) == []

    [request] = created(person)
    assert request["data"]["To"] == f"whatsapp:{BSUID}"  # Twilio's form for a BSUID: no "+"
    sid = person.api.created[0]["sid"]
    assert '"recorded"' in status(person, sid, "delivered", To=f"whatsapp:{BSUID}")["body"]
    record = person.get()
    assert [m["content"] for m in record["messages"] if m["role"] == "user"] == ["Hi, it's me"]
    assert record["messages"][-1]["delivery_status"] == "delivered"
    assert record["recipient_username"] == "zoe.example" and record["recipient_parent_bsuid"] == PARENT


def test_a_message_with_phone_and_bsuid_teaches_the_conversation_who_writes(engine):
    both = whatsapp_text("first, with my number")
    both.update(ExternalUserId=f"whatsapp:{BSUID}", ProfileUsername="zoe.example")

    assert engine.handle(twilio_event("whatsapp", both))["statusCode"] == 200
    record = engine.get()
    assert (record["recipient_bsuid"], record["recipient_username"]) == (BSUID, "zoe.example")

    assert (
        engine.handle(twilio_event("whatsapp", username_only("later, number withheld")))["statusCode"] == 200
    )
    assert [m["body"]["conversation_id"] for m in engine.queued("whatsapp")] == ["c1", "c1"]


def test_a_new_profile_name_is_learned_and_an_unchanged_one_writes_nothing(engine):
    assert engine.handle(twilio_event("whatsapp", whatsapp_text()))["statusCode"] == 200  # "Zoë", known
    engine.handle(twilio_event("whatsapp", whatsapp_text(ProfileName="Zoë M.")))

    assert engine.get()["profile_name"] == "Zoë M."


@pytest.mark.parametrize(
    "sender", ["whatsapp:US.", "whatsapp:USA.123", "whatsapp:US.12-34", "whatsapp:us.123"]
)
def test_a_malformed_bsuid_finds_nothing_and_is_refused_clearly(engine, sender):
    params = whatsapp_text()
    params.update(From=sender, ExternalUserId=sender)

    answer = engine.handle(twilio_event("whatsapp", params))

    assert answer["statusCode"] == 200 and engine.all_queued() == 0  # Twilio: TwiML, not retried
    assert engine.metric("WebhookRefused") == 1


@pytest.mark.sqlite_only
def test_import_refuses_a_record_whose_bsuid_is_not_one(engine_env):
    records = [
        conversation("ok", recipient_bsuid=BSUID),
        conversation("bad", recipient_bsuid="+4915112345678"),
    ]

    result = cli(engine_env, "conversations", "import", "-", stdin=json.dumps(records), check=False)

    assert (
        result.returncode == 2 and "recipient_bsuid" in result.stderr and "nothing imported" in result.stderr
    )
    assert json.loads(cli(engine_env, "conversations", "list").stdout) == []


@pytest.mark.sqlite_only
def test_a_database_from_before_bsuids_is_upgraded_and_finds_them(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE conversations (conversation_id TEXT PRIMARY KEY, record TEXT NOT NULL,"
        " gsi_company_whatsapp_number GENERATED ALWAYS AS (json_extract(record, '$.gsi_company_whatsapp_number')) VIRTUAL,"
        " task_complete GENERATED ALWAYS AS (json_extract(record, '$.task_complete')) VIRTUAL);"
        "PRAGMA user_version = 5;"
    )
    record = conversation(recipient_bsuid=BSUID)
    old.execute("INSERT INTO conversations VALUES (?, ?)", ("c1", json.dumps(record)))
    old.commit()
    old.close()

    store = SqliteConversationStore(Database(str(path)))

    assert [r["conversation_id"] for r in store.find_active(BSUID_GSI, COMPANY, BSUID)] == ["c1"]
