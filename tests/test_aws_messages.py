"""DynamoDB's message items (MessagesTable): what each write adds or takes out, dedupe under races, the
migration of tables from before (messages inside the record, archive items), and the write units a
message costs."""

from __future__ import annotations

import json
import threading
import time

import pytest
from boto3.dynamodb.types import TypeSerializer
from botocore.awsrequest import AWSResponse

from replies_engine.adapters.aws.clients import client
from replies_engine.ports import StoreError

from .aws import Body, billed_write_units, history
from .conftest import conversation

pytestmark = pytest.mark.aws_only

LEASE = 300
ARCHIVE = "old#archive#2026-01-0{}T00:00:00.000000Z"  # what the old store named them


def message(message_id: str, **fields) -> dict:
    return {
        "message_id": message_id,
        "role": "user",
        "content": message_id,
        "timestamp": "2026-01-01T00:00:01.000000Z",  # as stage 1 stamps them
        "batch_id": None,
        **fields,
    }


def raw_put(engine, item: dict) -> None:
    """An item written as the store before MessagesTable wrote it."""
    serialize = TypeSerializer().serialize
    engine.stack.dynamodb.put_item(
        TableName=engine.stack.refs["ConversationsTable"], Item={k: serialize(v) for k, v in item.items()}
    )


def raw_record(engine, conversation_id: str = "old") -> dict | None:
    return engine.stack.dynamodb.get_item(
        TableName=engine.stack.refs["ConversationsTable"], Key={"conversation_id": {"S": conversation_id}}
    ).get("Item")


def message_items(engine) -> list[dict]:
    items = engine.stack.dynamodb.scan(TableName=engine.stack.refs["MessagesTable"])["Items"]
    return sorted(items, key=lambda i: (i["conversation_id"]["S"], int(i["seq"]["N"])))


def old_shape(engine, old: list[dict], archived: int = 0, **fields) -> None:
    """Conversation `old` as a table from before holds it: the first `archived` messages in two
    archive items, the rest in the record."""
    raw_put(engine, conversation("old", messages=old[archived:], **fields))
    if archived:
        half = archived // 2
        for n, part in ((1, old[:half]), (2, old[half:archived])):
            raw_put(engine, {"conversation_id": ARCHIVE.format(n), "archive_of": "old", "messages": part})


# --- what each write does ------------------------------------------------------------------------


def test_the_emergency_unlock_takes_out_exactly_the_batchs_messages(engine):
    store = engine.runtime.store
    store.lock_and_append("c1", "b1", [message("SM1")], now=time.time(), lock_timeout_seconds=LEASE)
    store.release_lock("c1", "b1", status="ai_response_sent", now=time.time(), reply=message("RE1"))
    before = store.messages("c1")
    batch = [message(f"SM{n}", batch_id="b2") for n in (2, 3, 4)]
    store.lock_and_append("c1", "b2", batch, now=time.time(), lock_timeout_seconds=LEASE)

    unlocked = store.emergency_unlock("c1", "b2", reason="AI queue down", now=time.time(), to_pending=True)

    assert unlocked["conversation_status"] == "processing_error" and "lock_owner" not in unlocked
    assert store.messages("c1") == before
    assert store.get("c1")["pending_messages"] == [{**m, "batch_id": None} for m in batch]
    assert store.emergency_unlock("c1", "b2", reason="again", now=time.time()) is None  # not its lock


def test_debounce_dedupes_against_the_history_and_the_pending_messages(engine):
    store = engine.runtime.store

    added = store.add_pending("c1", [message("SMold"), message("SM1"), message("SM1")], now=time.time())
    again = store.add_pending("c1", [message("SM1")], now=time.time())

    assert added.status == "added" and [m["message_id"] for m in added.appended] == ["SM1"]
    assert added.duplicates == ["SMold", "SM1"]
    assert again.status == "duplicates"


def test_one_of_racing_debounce_appends_of_one_message_wins(engine):
    store, racers = engine.runtime.store, 6
    for run in range(10):
        barrier, outcomes = threading.Barrier(racers), []

        def race(run=run, barrier=barrier, outcomes=outcomes):
            barrier.wait()
            outcomes.append(store.add_pending("c1", [message(f"SM{run}")], now=time.time()).status)

        threads = [threading.Thread(target=race) for _ in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(outcomes) == ["added"] + ["duplicates"] * (racers - 1)
    assert [m["message_id"] for m in store.get("c1")["pending_messages"]] == [f"SM{n}" for n in range(10)]


def test_an_unlock_shows_the_messages_that_came_while_it_wrote(engine):
    """A pending message added between the unlock's read and its write must be in the record the unlock
    returns: that record decides whether a flush token follows."""
    store = engine.runtime.store
    store.lock_and_append("c1", "b1", [message("SM1")], now=time.time(), lock_timeout_seconds=LEASE)
    events, raced = client("dynamodb").meta.events, []

    def race(model, params, **kwargs):
        if model.name == "TransactWriteItems" and not raced:
            raced.append("racing")  # before: add_pending's own transaction comes through here too
            raced.append(store.add_pending("c1", [message("SM2")], now=time.time()).status)

    events.register("before-parameter-build.dynamodb", race)
    try:
        released = store.release_lock(
            "c1", "b1", status="ai_response_sent", now=time.time(), reply=message("RE1")
        )
    finally:
        events.unregister("before-parameter-build.dynamodb", race)

    assert raced == ["racing", "added"]
    assert [m["message_id"] for m in released["pending_messages"]] == ["SM2"]
    assert [m["message_id"] for m in store.messages("c1")] == ["SMold", "SM1", "RE1"]


@pytest.fixture
def answers():
    """answers(operation, body, match) → the next `operation` whose request contains `match` answers
    400 with the error `body`; returns a one-element list counting how often that happened."""
    hooks = []

    def install(operation: str, body: dict, match: str = "") -> list[int]:
        tries = [0]

        def answer(request, **kwargs):
            if tries[0] or match.encode() not in (request.body or b""):
                return None
            tries[0] += 1
            headers = {"Content-Type": "application/x-amz-json-1.0"}
            return AWSResponse(request.url, 400, headers, Body(json.dumps(body).encode()))

        event = f"before-send.dynamodb.{operation}"
        client("dynamodb").meta.events.register(event, answer)
        hooks.append((event, answer))
        return tries

    yield install
    for event, answer in hooks:
        client("dynamodb").meta.events.unregister(event, answer)


def test_a_transaction_conflict_is_decided_again(engine, answers):
    cancelled = {
        "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
        "message": "Transaction cancelled",
        "CancellationReasons": [{"Code": "TransactionConflict"}, {"Code": "None"}],
    }
    tries = answers("TransactWriteItems", cancelled)

    outcome = engine.runtime.store.lock_and_append(
        "c1", "b1", [message("SM1")], now=time.time(), lock_timeout_seconds=LEASE
    )

    assert tries == [1] and outcome.status == "acquired"
    assert [m["message_id"] for m in engine.runtime.store.messages("c1")] == ["SMold", "SM1"]


def test_a_batch_of_more_than_a_transaction_holds_is_refused(engine):
    messages = [message(f"SM{n}") for n in range(100)]

    with pytest.raises(StoreError):
        engine.runtime.store.lock_and_append(
            "c1", "b1", messages, now=time.time(), lock_timeout_seconds=LEASE
        )
    assert engine.get()["conversation_status"] == "initial_message_sent"


# --- the migration of tables from before ------------------------------------------------------------


def test_migrate_moves_records_and_archives_into_message_items_once(engine):
    store, old = engine.runtime.store, history(9)
    old_shape(engine, old, archived=5)
    # before the migration, reads show what the record holds itself (its archives need a Scan)
    assert store.messages("old") == old[5:] and "messages" not in store.get("old")

    assert store.migrate() == {"conversations": 1, "messages": 9}

    assert store.messages("old") == old
    assert store.messages("old", last=3) == old[-3:]
    record = raw_record(engine)
    assert "messages" not in record and record["last_message_seq"] == {"N": "4"}
    assert raw_record(engine, ARCHIVE.format(1)) is None and raw_record(engine, ARCHIVE.format(2)) is None
    assert [r["conversation_id"] for r in store.list()] == ["c1", "old"]
    redelivered = store.lock_and_append("old", "b1", [old[0]], now=time.time(), lock_timeout_seconds=LEASE)
    assert redelivered.status == "duplicates"  # the oldest archived message too

    items = message_items(engine)
    assert store.migrate() == {"conversations": 0, "messages": 0}
    assert message_items(engine) == items


def test_migrate_resumes_after_a_crash(engine, answers):
    store, old = engine.runtime.store, history(9)
    old_shape(engine, old, archived=5)
    store._write_messages("old", old[5:], 1)  # a crash before the record's update left these
    answers("DeleteItem", {"__type": "ValidationException", "message": "crash"}, match=ARCHIVE.format(2))

    with pytest.raises(StoreError):
        store.migrate()  # the newer archive's delete fails: its messages are written, the older one gone
    assert raw_record(engine, ARCHIVE.format(1)) is None and raw_record(engine, ARCHIVE.format(2))

    assert store.migrate() == {"conversations": 1, "messages": 3}
    assert store.messages("old") == old
    assert len([i for i in message_items(engine) if i["conversation_id"]["S"] == "old"]) == 9


def test_migrate_redoes_a_conversation_an_old_lambda_appends_to_meanwhile(engine):
    store, old, late = engine.runtime.store, history(4), message("SMlate")
    events, appended = client("dynamodb").meta.events, []

    def old_lambda(model, params, **kwargs):
        if model.name == "UpdateItem" and "REMOVE messages" in params["UpdateExpression"] and not appended:
            appended.append(append_the_old_way(engine, late))

    old_shape(engine, old)
    events.register("before-parameter-build.dynamodb", old_lambda)
    try:
        assert store.migrate() == {"conversations": 1, "messages": 5}
    finally:
        events.unregister("before-parameter-build.dynamodb", old_lambda)

    assert appended and store.messages("old") == [*old, late]


def append_the_old_way(engine, entry: dict) -> bool:
    """What a Lambda from before does on an append: list_append to the record's `messages`."""
    serialize = TypeSerializer().serialize
    engine.stack.dynamodb.update_item(
        TableName=engine.stack.refs["ConversationsTable"],
        Key={"conversation_id": {"S": "old"}},
        UpdateExpression="SET messages = list_append(if_not_exists(messages, :empty), :m)",
        ExpressionAttributeValues={":empty": {"L": []}, ":m": serialize([entry])},
    )
    return True


def test_a_message_an_old_lambda_appends_after_the_migration_goes_after_the_others(engine):
    store, old, late = engine.runtime.store, history(4), message("SMlate")
    old_shape(engine, old)
    store.migrate()
    append_the_old_way(engine, late)  # it sees no `messages`, so it makes a list of one

    store.lock_and_append("old", "b1", [message("SMnew")], now=time.time(), lock_timeout_seconds=LEASE)

    assert [m["message_id"] for m in store.messages("old")] == [
        *(m["message_id"] for m in old),
        "SMlate",
        "SMnew",
    ]


WRITES = {
    "lock_and_append": lambda store: store.lock_and_append(
        "old", "b2", [message("SMnew")], now=time.time(), lock_timeout_seconds=LEASE
    ),
    "add_pending": lambda store: store.add_pending("old", [message("SMnew")], now=time.time()),
    "flush_pending": lambda store: store.flush_pending(
        "old", "b2", pending_version=1, now=time.time(), lock_timeout_seconds=LEASE
    ),
    "release_lock": lambda store: store.release_lock(
        "old", "b1", status="ai_response_sent", now=time.time(), reply=message("SMnew")
    ),
    "emergency_unlock": lambda store: store.emergency_unlock("old", "b1", reason="test", now=time.time()),
}


@pytest.mark.parametrize("write", sorted(WRITES))
def test_a_write_on_a_record_not_yet_migrated_migrates_it_first(engine, write):
    store, old = engine.runtime.store, history(6)
    fields = (
        {"pending_messages": [message("SMnew")], "pending_version": 1} if write == "flush_pending" else {}
    )
    if write in ("release_lock", "emergency_unlock"):  # b1 holds the lock, the last two messages its batch
        old[-2:] = [{**m, "batch_id": "b1"} for m in old[-2:]]
        fields = {
            "conversation_status": "processing_reply",
            "lock_owner": "b1",
            "processing_started_at": "2026-01-01T00:00:00.000000Z",
            "gsi_locked": "locked",
        }
    old_shape(engine, old, archived=2, **fields)
    redelivered = store.lock_and_append("old", "b3", [old[3]], now=time.time(), lock_timeout_seconds=LEASE)
    assert redelivered.status == "duplicates"  # the record's messages are migrated before dedupe

    assert WRITES[write](store)

    expected = {
        "lock_and_append": [*old[2:], message("SMnew")],
        "add_pending": old[2:],
        "flush_pending": [*old[2:], message("SMnew", batch_id="b2")],
        "release_lock": [*old[2:], message("SMnew")],
        "emergency_unlock": old[2:-2],
    }[write]
    assert store.messages("old") == expected
    assert "messages" not in raw_record(engine)
    # its archives need a Scan to be found: migrate() puts them before the others
    assert store.migrate() == {"conversations": 1, "messages": 2}
    assert store.messages("old") == [*old[:2], *expected]


# --- what a message costs ------------------------------------------------------------------------


@pytest.mark.parametrize("length", [10, 3000])
def test_the_write_units_of_a_message_do_not_grow_with_the_history(engine, length):
    store = engine.runtime.store
    engine.put(conversation(messages=history(length)))
    incoming = history(length + 2)[length:]
    reply = {**incoming[1], "role": "assistant", "batch_id": "b1"}

    _, lock = billed_write_units(
        engine.stack,
        "c1",
        lambda: store.lock_and_append("c1", "b1", incoming[:1], now=time.time(), lock_timeout_seconds=LEASE),
    )
    _, unlock = billed_write_units(
        engine.stack,
        "c1",
        lambda: store.release_lock("c1", "b1", status="ai_response_sent", now=time.time(), reply=reply),
    )

    # transactions of items under 1 KB, 2 WCU each: the record and one message; the unlock also writes
    # the pointer a status callback finds the reply by
    assert (lock, unlock) == (4, 6)


def test_stage_1_may_never_read_the_history():
    """Stage 1 stays fast and cheap: it writes single messages (STOP) and reads single items (a status
    callback's pointer), never a Query of a conversation's messages."""
    from .aws import template

    resources = template()["Resources"]

    def statements(function: dict) -> list[dict]:
        role = resources[function["Properties"]["Role"]["Fn::GetAtt"].split(".")[0]]
        return [s for policy in role["Properties"]["Policies"] for s in policy["PolicyDocument"]["Statement"]]

    functions = resources
    [messages] = [
        s for s in statements(functions["IncomingWebhookHandler"]) if "MessagesTable" in json.dumps(s)
    ]
    assert "dynamodb:Query" not in messages["Action"] and "lsi-seq" not in json.dumps(messages)
    for name in ("BatchProcessorLambda", "ReplySenderLambda", "StalledConversationSweeper"):
        assert "MessagesTable" in json.dumps(statements(functions[name]))
