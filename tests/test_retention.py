"""Retention: with MESSAGE_RETENTION_DAYS, what people wrote (and was written to them) is kept no longer.
The embedded engine's sweeper deletes it (a virtual clock moves the days here); on AWS each message
item carries `expires_at` for the table's TTL (moto does not run TTL: the attribute is checked). The
record keeps its counters and status."""

from __future__ import annotations

import pytest

from replies_engine import clock
from replies_engine.handlers import stalled_sweeper

from .conftest import conversation
from .payloads import twilio_event, whatsapp_text

DAY = 86_400


def stamped(message_id: str, days_ago: float, now: float) -> dict:
    return {"message_id": message_id, "role": "user", "content": f"{message_id} text",
            "timestamp": clock.iso(now - days_ago * DAY)}  # fmt: skip


@pytest.fixture
def kept_30_days(engine):
    engine.env(MESSAGE_RETENTION_DAYS="30")
    now = clock.now()
    engine.put(conversation(messages=[stamped("SMold", 31, now), stamped("SMrecent", 29, now)]))
    assert engine.handle(twilio_event("whatsapp", whatsapp_text("Noch da?")))["statusCode"] == 200
    engine.deliver("whatsapp")
    engine.deliver("ai")  # today's message and its reply
    return engine


def ids(engine) -> list[str]:
    return [m["content"] if m["role"] == "user" else m["role"] for m in engine.get()["messages"]]


@pytest.mark.sqlite_only
def test_the_sweeper_deletes_what_is_past_the_retention_and_keeps_the_record(kept_30_days, monkeypatch):
    engine = kept_30_days
    status = engine.get()["conversation_status"]

    assert stalled_sweeper({}, None)["pruned"] == 1
    assert ids(engine) == ["SMrecent text", "Noch da?", "assistant"]

    later = clock.now() + 2 * DAY  # two days on: the recent one is past it too; today's are not
    monkeypatch.setattr(clock, "now", lambda: later)
    assert stalled_sweeper({}, None)["pruned"] == 1
    assert ids(engine) == ["Noch da?", "assistant"]

    monkeypatch.setattr(clock, "now", lambda: later + 30 * DAY)
    [reply] = engine.outbox()
    assert stalled_sweeper({}, None)["pruned"] == 3  # the two messages and the outbox entry of the reply
    record = engine.get()
    assert record["messages"] == [] and engine.outbox() == []
    assert record["conversation_status"] == status  # the record stays, with its status
    rows = engine.runtime.store._db.connection().execute("SELECT count(*) FROM deliveries").fetchone()[0]
    assert rows == 0 and reply["body"]  # the reply's delivery pointer went with it
    # nothing of it stays readable in the file: secure_delete overwrote it, the WAL was checkpointed
    files = b"".join(p.read_bytes() for p in engine.path.glob("engine.db*"))
    for words in ("SMold text", "SMrecent text", "Noch da?", reply["body"]):
        assert words.encode() not in files


@pytest.mark.aws_only
def test_each_message_item_expires_with_the_tables_ttl(kept_30_days):
    engine = kept_30_days
    items = engine.stack.dynamodb.query(
        TableName=engine.stack.refs["MessagesTable"],
        KeyConditionExpression="conversation_id = :c",
        ExpressionAttributeValues={":c": {"S": "c1"}},
    )["Items"]

    assert len(items) == 4
    for item in items:
        written = clock.parse_iso(item["timestamp"]["S"])
        assert int(item["expires_at"]["N"]) == int(written) + 30 * DAY
    assert "expires_at" not in engine.get()["messages"][0]  # the item's, never shown as the message's
    assert stalled_sweeper({}, None)["pruned"] == 0  # TTL's work, not the sweeper's


def test_without_a_retention_nothing_is_pruned_or_stamped(engine):
    engine.put(conversation(messages=[stamped("SMold", 3650, clock.now())]))

    assert "pruned" not in stalled_sweeper({}, None)
    assert [m["message_id"] for m in engine.get()["messages"]] == ["SMold"]
    if engine.stack:
        [item] = engine.stack.dynamodb.scan(TableName=engine.stack.refs["MessagesTable"])["Items"]
        assert "expires_at" not in item
