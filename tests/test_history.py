"""Long conversations, on both backends: messages live apart from the record, so stage 1
never loads the history and a lock+append never rewrites it, while dedupe and order still hold over
the whole conversation. And the upgrade of an embedded database from before."""

from __future__ import annotations

import json
import sqlite3

import pytest

from replies_engine.adapters.sqlite import Database, SqliteConversationStore
from replies_engine.channels import CHANNELS
from replies_engine.handlers import batch_processor
from replies_engine.local.workers import sqs_event

from .conftest import conversation
from .payloads import COMPANY, PERSON, twilio_event, whatsapp_text
from .processes import cli, cli_json

HISTORY = 3000


def history(n: int) -> list[dict]:
    """n messages, alternating person and assistant, ~150 characters each."""
    return [
        {
            "message_id": f"SMh{i:031x}",  # never one of payloads.sid()
            "role": "assistant" if i % 2 else "user",  # answered: the last is a reply
            "content": f"message {i} " + "lorem ipsum dolor sit amet " * 5,
            "timestamp": f"2026-01-01T00:00:00.{i:06d}Z",
            "channel_type": "whatsapp",
            "batch_id": f"batch-{i // 2}",
        }
        for i in range(n)
    ]


@pytest.fixture
def long(engine):
    engine.env(BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0")
    engine.put(conversation(messages=history(HISTORY)))
    return engine


def post(engine, text: str, **overrides: str) -> dict:
    params = whatsapp_text(text, **overrides)
    assert engine.handle(twilio_event("whatsapp", params))["statusCode"] == 200
    return params


def test_records_come_without_their_history(long):
    store = long.runtime.store
    [found] = store.find_active(CHANNELS["whatsapp"].gsi, COMPANY, PERSON)

    assert "messages" not in found and "messages" not in store.get("c1")
    assert len(json.dumps(store.get("c1"))) < 2000
    assert [m["message_id"] for m in store.messages("c1", last=3)] == [
        m["message_id"] for m in history(HISTORY)[-3:]
    ]
    assert len(store.messages("c1")) == HISTORY


def test_a_long_conversation_dedupes_against_its_first_message_and_keeps_order(long):
    first = history(HISTORY)[0]["message_id"]  # the person's first message, 3,000 messages ago
    post(long, "a message Twilio delivers again", MessageSid=first)
    new = post(long, "can I move my appointment?")["MessageSid"]

    assert long.deliver("whatsapp") == 2
    [ai] = long.queued("ai")
    assert [m["message_id"] for m in ai["body"]["messages"]] == [new]
    assert [m["message_id"] for m in ai["body"]["history"]] == [
        m["message_id"] for m in history(HISTORY)[-20:]
    ]
    assert long.metric("DuplicateMessageDetected") == 1

    assert long.deliver("ai") == 1
    messages = long.get()["messages"]
    assert len(messages) == HISTORY + 2
    assert [m["message_id"] for m in messages[:HISTORY]] == [m["message_id"] for m in history(HISTORY)]
    assert [m["role"] for m in messages[-2:]] == ["user", "assistant"]
    assert [m["message_id"] for m in messages].count(first) == 1


def test_a_redelivered_batch_is_appended_once_in_a_long_conversation(long):
    post(long, "hello again")
    event = sqs_event("whatsapp", long.runtime.queue.receive("whatsapp", wait_seconds=5))

    assert batch_processor(event, None) == {"batchItemFailures": []}
    assert batch_processor(event, None) == {"batchItemFailures": []}  # SQS delivers it again
    long.deliver("whatsapp")  # the flush tokens

    users = [m for m in long.get()["messages"] if m["content"] == "hello again"]
    assert len(users) == 1


@pytest.mark.sqlite_only
def test_an_embedded_database_from_before_is_upgraded_in_place(tmp_path, engine_env):
    """Schema 2 kept each conversation's messages inside its record: the first connection moves them
    into rows, in order, and the record, the dedupe and `conversations show` see them."""
    path = tmp_path / "old.db"
    Database(str(path)).connection().close()  # today's schema, then back to 2: no message rows
    old = sqlite3.connect(path)
    old.executescript("DROP TABLE messages; PRAGMA user_version = 2;")
    messages = history(5)
    old.execute(
        "INSERT INTO conversations (conversation_id, record) VALUES (?, ?)",
        ("c1", json.dumps(conversation(messages=[*messages, messages[0]]))),  # a repeated id, kept once
    )
    old.commit()
    old.close()

    store = SqliteConversationStore(Database(str(path)))

    assert "messages" not in store.get("c1")
    assert store.messages("c1") == messages
    env = {**engine_env, "REPLIES_SQLITE_PATH": str(path)}
    assert cli_json(env, "conversations", "show", "c1")["messages"] == messages
    assert cli_json(env, "migrate") == {"backend": "sqlite", "conversations": 0, "messages": 0}
    outcome = store.lock_and_append(
        "c1", "batch-x", [messages[1], *history(7)[5:]], now=0, lock_timeout_seconds=300
    )
    assert outcome.status == "acquired" and outcome.duplicates == [messages[1]["message_id"]]
    assert [m["message_id"] for m in store.messages("c1")] == [m["message_id"] for m in history(7)]


@pytest.mark.sqlite_only
def test_import_refuses_messages_that_are_not_a_list_of_objects(engine_env):
    bad = cli(
        engine_env,
        "conversations",
        "import",
        "-",
        stdin=json.dumps([conversation(messages="hello")]),
        check=False,
    )

    assert bad.returncode == 2 and "messages must be a list of objects" in bad.stderr


def test_messages_that_joined_out_of_order_are_kept_in_arrival_order(engine):
    """Two invocations at once (a pool, or Lambda) may commit a person's messages in the other order."""
    store = engine.runtime.store
    first, second = (
        {
            **history(2)[0],
            "message_id": f"SM{n}",
            "batch_id": None,
            "timestamp": f"2026-02-01T00:00:0{n}.000000Z",
        }
        for n in (1, 2)
    )
    store.add_pending("c1", [second], now=0)
    version = store.add_pending("c1", [first], now=0).record["pending_version"]

    outcome = store.flush_pending("c1", "b1", pending_version=version, now=0, lock_timeout_seconds=300)

    assert [m["message_id"] for m in outcome.appended] == ["SM1", "SM2"]
    assert [m["message_id"] for m in store.messages("c1")][-2:] == ["SM1", "SM2"]
