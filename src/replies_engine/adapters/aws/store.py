"""ConversationStore on DynamoDB: ConversationsTable for the records, MessagesTable for the messages.

A record holds the conversation's state (§4.1 fields, `pending_messages`, `refused_messages`) and
`last_message_seq`, the `seq` of its newest message; never its `messages`. Each message is its own item
in MessagesTable: partition key `conversation_id`, sort key `message_key` (its `message_id`, or
`#<seq>` when it has none), `seq` its place in the conversation, ordered by the local index `lsi-seq`.
So an append writes one small item, whatever the length of the history, and the message id as key
makes deduplication a condition on the item itself (`attribute_not_exists(message_key)`).

Each conditional operation reads the record (and, with one BatchGetItem, which of its messages are
stored already), decides with the same rules as the SQLite backend (`conversation.py`), then writes
ONE TransactWriteItems: the record's conditional Update and the messages' conditional Puts (or
ConditionChecks, Deletes). The Update's condition re-checks what the decision rested on: the lock is
free (or its lease expired, or `batch_id` holds it), `last_message_seq` (and where it matters
`pending_version`) is the one read; so a concurrent write cancels the transaction, and the operation
reads again. A write without message items is one conditional UpdateItem.

Locked records carry `gsi_locked = "locked"`, the partition key of the sparse `gsi-locked` index:
the sweeper queries that index, never scans the table.

Records from before MessagesTable are migrated by `migration.py`; the DynamoDB toolkit is `dynamo.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ... import clock
from ...channels import GSIS, Gsi
from ...conversation import (
    DELIVERY_FINAL,
    DELIVERY_ORDER,
    MAX_MESSAGES_PER_BATCH,
    PROCESSING_ERROR,
    PROCESSING_REPLY,
    PROCESSING_TIMEOUT,
    delivery_moves,
    flush_candidates,
    flush_split,
    holds,
    inbound_changes,
    is_locked,
    lock_fields,
    provider_ids,
    split_duplicates,
)
from ...ports import LockOutcome, Record, StoreError
from .clients import client
from .dynamo import (
    ATTEMPTS,
    ConditionFailed,
    after,
    chunks,
    commit,
    conditional,
    contended,
    counter_unchanged,
    drain,
    errors,
    from_dynamo,
    length_unchanged,
    to_dynamo,
    without,
)
from .migration import LegacyShape

LOCKED_INDEX = "gsi-locked"
LOCKED = "locked"
SEQ_INDEX = "lsi-seq"
_KEY_ATTRS = frozenset(attr for gsi in GSIS for attr in (gsi.company_attr, gsi.recipient_attr))
_MESSAGE_ATTRS = ("conversation_id", "message_key", "seq")  # the item's, not the message's
_LOCK_FREE = (
    "(attribute_not_exists(conversation_status) OR conversation_status <> :locked_status"
    " OR processing_started_at < :expiry)"
)
_LOCK_ATTRS = ("lock_owner", "gsi_locked", "sending")  # what an unlock removes


class DynamoConversationStore(LegacyShape):
    """The ConversationStore port on DynamoDB: `table` the conversations, `messages_table` the messages."""

    def __init__(self, table: str, messages_table: str) -> None:
        from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

        self.table = table
        self.messages_table = messages_table
        self._serialize = TypeSerializer().serialize
        self._deserialize = TypeDeserializer().deserialize

    # --- reads -----------------------------------------------------------------------------------

    def find_active(self, gsi: Gsi, company: str, recipient: str) -> list[Record]:
        return self._records(
            "query",
            TableName=self.table,
            IndexName=gsi.name,
            KeyConditionExpression="#c = :c AND #r = :r",
            FilterExpression="task_complete = :zero",  # a placeholder: a literal 0 matches nothing on moto
            ExpressionAttributeNames={"#c": gsi.company_attr, "#r": gsi.recipient_attr},
            ExpressionAttributeValues=self._values({":c": company, ":r": recipient, ":zero": 0}),
        )

    def get(self, conversation_id: str) -> Record | None:
        record = self._get(conversation_id)
        return without("messages", record) if record else None

    def messages(self, conversation_id: str, *, last: int | None = None) -> list[Record]:
        """A Query on `lsi-seq`: oldest first; with `last`, the newest `last` read backwards, then turned."""
        if last is not None and last <= 0:
            return []
        kwargs: dict[str, Any] = {
            "TableName": self.messages_table,
            "IndexName": SEQ_INDEX,
            "KeyConditionExpression": "conversation_id = :c",
            "ExpressionAttributeValues": self._values({":c": conversation_id}),
            "ConsistentRead": True,
        }
        if last is None:
            items = self._items("query", kwargs)
        else:
            kwargs["ScanIndexForward"] = False
            items = self._items("query", kwargs, {"MaxItems": last, "PageSize": last})[::-1]
        if not items:  # a record from before `replies-engine migrate` still holds its own
            old = (self._get(conversation_id) or {}).get("messages", [])
            return old[-last:] if last else old
        return [_message(item) for item in items]

    def list(self, status: str | None = None) -> list[Record]:
        """Tooling only: a paginated Scan (the archives of a table not yet migrated left out)."""
        kwargs: dict[str, Any] = {"FilterExpression": "attribute_not_exists(archive_of)"}
        if status is not None:
            kwargs.update(
                FilterExpression="attribute_not_exists(archive_of) AND conversation_status = :s",
                ExpressionAttributeValues=self._values({":s": status}),
            )
        records = self._records("scan", TableName=self.table, **kwargs)
        return sorted(records, key=lambda r: r["conversation_id"])

    def list_locked(self) -> list[Record]:
        return self._records(
            "query",
            TableName=self.table,
            IndexName=LOCKED_INDEX,
            KeyConditionExpression="gsi_locked = :locked",
            ExpressionAttributeValues=self._values({":locked": LOCKED}),
        )

    # --- writes ----------------------------------------------------------------------------------

    def put(self, record: Record) -> None:
        """The record, then its messages (seq 1..n, replacing the stored ones); not atomic (tooling)."""
        conversation_id = record["conversation_id"]
        messages = record.get("messages") or []
        item = {
            k: v
            for k, v in record.items()
            if k not in ("messages", "gsi_locked")
            and not (k in _KEY_ATTRS and v == "")  # keys cannot be empty
        }
        if item.get("conversation_status") == PROCESSING_REPLY:
            item["gsi_locked"] = LOCKED
        item["last_message_seq"] = len(messages)
        stored = self._stored_keys(conversation_id)
        written = self._write_messages(conversation_id, messages, 1)
        self._batch_write(
            [{"DeleteRequest": {"Key": self._message_key(conversation_id, k)}} for k in stored - written]
        )
        with errors():
            client("dynamodb").put_item(TableName=self.table, Item=self._item(item))

    def record_refused_message(self, conversation_id: str, message: Record) -> bool:
        for _ in range(ATTEMPTS):
            record = self.get(conversation_id)
            if record is None:
                raise StoreError(f"conversation {conversation_id} does not exist")
            refused = record.get("refused_messages", [])
            if any(m.get("message_id") == message["message_id"] for m in refused):
                return False
            unchanged, length = length_unchanged("refused_messages", len(refused))
            try:
                self._update(
                    conversation_id,
                    "SET refused_messages = list_append(if_not_exists(refused_messages, :empty), :m)",
                    unchanged,
                    {":m": [message], ":empty": [], **length},
                )
                return True
            except ConditionFailed:
                continue
        raise contended(conversation_id)

    def write_unlocked(self, conversation_id: str, *, changes: Record, message: Record | None = None) -> bool:
        for _ in range(ATTEMPTS):
            record = self._current(conversation_id)
            if record is None:
                raise StoreError(f"conversation {conversation_id} does not exist")
            seq = record.get("last_message_seq", 0)
            fields = inbound_changes(record, changes)
            if message is not None:
                fields = {**fields, "last_message_seq": seq + 1}
            unchanged, values = counter_unchanged("last_message_seq", seq)
            items = []
            if message is not None:
                items.append(self._put(conversation_id, message, seq + 1))
                if message.get("role") == "agent":
                    items.extend(self._pointers(conversation_id, message))
            try:
                commit(self._update_op(conversation_id, fields, unchanged, values), items)
            except ConditionFailed as failed:
                if failed.reasons[:2] == ["None", "ConditionalCheckFailed"]:
                    return False  # the message is there already
                continue
            return True
        raise contended(conversation_id)

    def lock_and_append(
        self,
        conversation_id: str,
        batch_id: str,
        messages: list[Record],
        *,
        now: float,
        lock_timeout_seconds: float,
    ) -> LockOutcome:
        for _ in range(ATTEMPTS):
            record = self._current(conversation_id)
            if record is None:
                return LockOutcome("missing")
            fresh, duplicates = split_duplicates(self._stored(conversation_id, messages), messages)
            if not fresh:
                return LockOutcome("duplicates", duplicates=duplicates)
            if is_locked(record, now, lock_timeout_seconds):
                return LockOutcome("locked", duplicates=duplicates, lock_owner=record.get("lock_owner"))
            if len(fresh) > MAX_MESSAGES_PER_BATCH:
                raise StoreError(f"{len(fresh)} new messages in one batch: at most {MAX_MESSAGES_PER_BATCH}")
            seq = record.get("last_message_seq", 0)
            fields = {
                **lock_fields(record, batch_id, fresh, now),
                "gsi_locked": LOCKED,
                "last_message_seq": seq + len(fresh),
            }
            unchanged, values = counter_unchanged("last_message_seq", seq)
            values.update(
                {":locked_status": PROCESSING_REPLY, ":expiry": clock.iso(now - lock_timeout_seconds)}
            )
            try:
                commit(
                    self._update_op(conversation_id, fields, f"{_LOCK_FREE} AND {unchanged}", values),
                    [self._put(conversation_id, m, n) for n, m in enumerate(fresh, seq + 1)],
                )
            except ConditionFailed:
                continue  # someone wrote in between: decide again on what is there now
            return LockOutcome(
                "acquired", record=after(record, fields), appended=fresh, duplicates=duplicates
            )
        raise contended(conversation_id)

    def add_pending(self, conversation_id: str, messages: list[Record], *, now: float) -> LockOutcome:
        for _ in range(ATTEMPTS):
            record = self._current(conversation_id)
            if record is None:
                return LockOutcome("missing")
            pending = record.get("pending_messages", [])
            waiting = {m.get("message_id") for m in pending}
            stored = self._stored(
                conversation_id, [m for m in messages if m.get("message_id") not in waiting]
            )
            fresh, duplicates = split_duplicates([*pending, *stored], messages)
            if not fresh:
                return LockOutcome("duplicates", record=record, duplicates=duplicates)
            if len(fresh) > MAX_MESSAGES_PER_BATCH:
                raise StoreError(f"{len(fresh)} new messages in one batch: at most {MAX_MESSAGES_PER_BATCH}")
            version = record.get("pending_version", 0)
            fields = {
                "pending_messages": [*pending, *fresh],
                "pending_version": version + 1,
                "updated_at": clock.iso(now),
            }
            unchanged, values = counter_unchanged("pending_version", version)
            try:
                commit(
                    self._update_op(conversation_id, fields, unchanged, values),
                    # not in the history either, when the transaction commits
                    [self._absent(conversation_id, m["message_id"]) for m in fresh if m.get("message_id")],
                )
            except ConditionFailed:
                continue
            return LockOutcome("added", record=after(record, fields), appended=fresh, duplicates=duplicates)
        raise contended(conversation_id)

    def flush_pending(
        self,
        conversation_id: str,
        batch_id: str,
        *,
        pending_version: int,
        now: float,
        lock_timeout_seconds: float,
        held: bool = False,
    ) -> LockOutcome:
        record = self._current(conversation_id)
        if record is None:
            return LockOutcome("missing")
        if record.get("pending_version", 0) != pending_version:
            return LockOutcome("changed")
        if (held and not holds(record, batch_id)) or (
            not held and is_locked(record, now, lock_timeout_seconds)
        ):
            return LockOutcome("locked", lock_owner=record.get("lock_owner"))
        candidates = flush_candidates(record, batch_id)
        moved, rest, duplicates = flush_split(self._stored(conversation_id, candidates), candidates)
        fields: dict[str, Any] = {
            "pending_messages": rest,
            "pending_version": pending_version + 1,
        }
        unchanged, values = counter_unchanged("pending_version", pending_version)
        values[":locked_status"] = PROCESSING_REPLY
        if held:
            condition = f"{unchanged} AND conversation_status = :locked_status AND lock_owner = :batch"
            values[":batch"] = batch_id
        else:
            condition = f"{unchanged} AND {_LOCK_FREE}"
            values[":expiry"] = clock.iso(now - lock_timeout_seconds)
        seq = record.get("last_message_seq", 0)
        if moved:
            fields.update(
                lock_fields(record, batch_id, moved, now),
                gsi_locked=LOCKED,
                last_message_seq=seq + len(moved),
            )
            same_seq, seq_values = counter_unchanged("last_message_seq", seq)
            condition += f" AND {same_seq}"
            values.update(seq_values)
        try:
            commit(
                self._update_op(conversation_id, fields, condition, values),
                [self._put(conversation_id, m, n) for n, m in enumerate(moved, seq + 1)],
            )
        except ConditionFailed:
            return LockOutcome("changed")  # a message or a lock came in between: the caller decides again
        if not moved:
            return LockOutcome("duplicates", duplicates=duplicates)
        return LockOutcome("acquired", record=after(record, fields), appended=moved, duplicates=duplicates)

    def release_lock(
        self,
        conversation_id: str,
        batch_id: str,
        *,
        status: str,
        now: float,
        reply: Record | None = None,
        changes: Record | None = None,
    ) -> Record | None:
        stamp = clock.iso(now)
        fields = {
            **(changes or {}),
            "conversation_status": status,
            "processing_completed_at": stamp,
            "updated_at": stamp,
        }
        if reply is None:
            return self._fenced(conversation_id, batch_id, fields)
        for _ in range(ATTEMPTS):
            record = self._current(conversation_id)
            if record is None or not holds(record, batch_id):
                return None
            seq = record.get("last_message_seq", 0)
            written = {**fields, "last_message_seq": seq + 1} if reply is not None else fields
            # pending_version too: the record returned must show what waits, or no flush would follow
            condition, values = self._unchanged_state(record, batch_id)
            items = (
                [self._put(conversation_id, reply, seq + 1), *self._pointers(conversation_id, reply)]
                if reply is not None
                else []
            )
            try:
                commit(
                    self._update_op(conversation_id, written, condition, values, remove=_LOCK_ATTRS), items
                )
            except ConditionFailed as failed:
                if failed.reasons[:2] == ["None", "ConditionalCheckFailed"]:
                    reply = None  # a message with its id is in the history already
                continue
            return after(record, written, removed=_LOCK_ATTRS)
        raise contended(conversation_id)

    def record_delivery(self, provider_id: str, status: str, error_code: str | None, *, now: float) -> str:
        """Two requests: the pointer item (GetItem), then the message's UpdateItem, conditioned on the
        status it holds being one that `status` moves forward from."""
        with errors():
            pointer = (
                client("dynamodb")
                .get_item(
                    TableName=self.messages_table, Key=self._pointer_key(provider_id), ConsistentRead=True
                )
                .get("Item")
            )
        if pointer is None:
            return "unknown"
        earlier = [s for s in (*DELIVERY_ORDER, *DELIVERY_FINAL) if delivery_moves(s, status)]
        names = {f":from{i}": s for i, s in enumerate(earlier)}
        condition = "attribute_not_exists(delivery_status)"
        if names:
            condition = f"({condition} OR delivery_status IN ({', '.join(names)}))"
        fields = {"delivery_status": status, "delivery_updated_at": clock.iso(now)}
        if error_code:
            fields["delivery_error_code"] = error_code
        try:
            conditional(
                "update_item",
                TableName=self.messages_table,
                Key=self._message_key(
                    pointer["target_conversation_id"]["S"], pointer["target_message_key"]["S"]
                ),
                UpdateExpression="SET " + ", ".join(f"{k} = :{k}" for k in fields),
                ConditionExpression=f"attribute_exists(message_key) AND {condition}",
                ExpressionAttributeValues=self._values({**names, **{f":{k}": v for k, v in fields.items()}}),
            )
        except ConditionFailed:
            return "stale"
        return "recorded"

    def annotate_message(self, conversation_id: str, message_id: str, fields: Record) -> bool:
        names = {f"#f{i}": name for i, name in enumerate(fields)}
        try:
            conditional(
                "update_item",
                TableName=self.messages_table,
                Key=self._message_key(conversation_id, message_id),
                UpdateExpression="SET " + ", ".join(f"{n} = :v{i}" for i, n in enumerate(names)),
                ConditionExpression="attribute_exists(message_key)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=self._values({f":v{i}": v for i, v in enumerate(fields.values())}),
            )
        except ConditionFailed:
            return False
        return True

    def count_turn(self, scope: str, day: str) -> int:
        """One UpdateItem (ADD) on a MessagesTable item no conversation uses: `ai_turns#<scope>`, `<day>`,
        expiring three days after its day began (the table's TTL)."""
        with errors():
            answer = client("dynamodb").update_item(
                TableName=self.messages_table,
                Key=self._message_key(f"ai_turns#{scope}", day),
                UpdateExpression="ADD turns :one SET expires_at = if_not_exists(expires_at, :expires)",
                ExpressionAttributeValues={
                    ":one": {"N": "1"},
                    ":expires": {"N": str(int(clock.parse_iso(f"{day}T00:00:00Z")) + 3 * 86_400)},
                },
                ReturnValues="UPDATED_NEW",
            )
        return int(answer["Attributes"]["turns"]["N"])

    def turns(self, scope: str, day: str) -> int:
        with errors():
            item = (
                client("dynamodb")
                .get_item(
                    TableName=self.messages_table,
                    Key=self._message_key(f"ai_turns#{scope}", day),
                    ConsistentRead=True,
                )
                .get("Item")
            )
        return int(item["turns"]["N"]) if item else 0

    def emergency_unlock(
        self, conversation_id: str, batch_id: str, *, reason: str, now: float, to_pending: bool = False
    ) -> Record | None:
        for _ in range(ATTEMPTS):
            record = self._current(conversation_id)
            if record is None or not holds(record, batch_id):
                return None
            batch = self._batch_items(conversation_id, batch_id)
            fields: dict[str, Any] = {
                "conversation_status": PROCESSING_ERROR,
                "last_error": reason,
                "updated_at": clock.iso(now),
            }
            if to_pending:  # debounce: back where they waited, for the next flush
                fields["pending_messages"] = [
                    *({**_message(item), "batch_id": None} for item in batch),
                    *record.get("pending_messages", []),
                ]
                fields["pending_version"] = record.get("pending_version", 0) + 1
            condition, values = self._unchanged_state(record, batch_id)
            deletes = [
                {
                    "Delete": {
                        "TableName": self.messages_table,
                        "Key": self._message_key(conversation_id, item["message_key"]),
                    }
                }
                for item in batch
            ]
            try:
                commit(
                    self._update_op(conversation_id, fields, condition, values, remove=_LOCK_ATTRS),
                    deletes[:MAX_MESSAGES_PER_BATCH],
                )
            except ConditionFailed:
                continue
            # more than a transaction holds (a batch regenerated with 100+ messages, rare): the rest after
            # it; a crash in between leaves them in the history, where dedupe then keeps them
            self._batch_write(
                [{"DeleteRequest": {"Key": d["Delete"]["Key"]}} for d in deletes[MAX_MESSAGES_PER_BATCH:]]
            )
            return after(record, fields, removed=_LOCK_ATTRS)
        raise contended(conversation_id)

    def renew_lock(
        self, conversation_id: str, batch_id: str, *, now: float, changes: Record | None = None
    ) -> Record | None:
        """One UpdateItem fenced on `batch_id` holding the lock, no read."""
        stamp = clock.iso(now)
        fields = {**(changes or {}), "processing_started_at": stamp, "updated_at": stamp}
        return self._fenced(conversation_id, batch_id, fields, remove=())

    def reset_stalled(self, conversation_id: str, batch_id: str, *, now: float) -> Record | None:
        return self._fenced(
            conversation_id,
            batch_id,
            {"conversation_status": PROCESSING_TIMEOUT, "updated_at": clock.iso(now)},
        )

    # --- migration from the one-item shape ---------------------------------------------------------

    # --- helpers ---------------------------------------------------------------------------------

    def _get(self, conversation_id: str) -> Record | None:
        """The item as stored (an old-shape record with its `messages`)."""
        with errors():
            item = (
                client("dynamodb")
                .get_item(TableName=self.table, Key=self._key(conversation_id), ConsistentRead=True)
                .get("Item")
            )
        return self._decode(item) if item else None

    def _stored(self, conversation_id: str, messages: list[Record]) -> list[Record]:
        """Those of `messages` already in MessagesTable, as `{"message_id"}` (one BatchGetItem per 100)."""
        ids = list(dict.fromkeys(m["message_id"] for m in messages if m.get("message_id")))
        found = []
        for chunk in chunks(ids, 100):
            request = {
                self.messages_table: {
                    "Keys": [self._message_key(conversation_id, i) for i in chunk],
                    "ConsistentRead": True,
                    "ProjectionExpression": "message_key",
                }
            }
            for response in drain("batch_get_item", request, "UnprocessedKeys"):
                found.extend(
                    item["message_key"]["S"] for item in response["Responses"].get(self.messages_table, [])
                )
        return [{"message_id": message_id} for message_id in found]

    def _stored_keys(self, conversation_id: str) -> set[str]:
        items = self._items(
            "query",
            {
                "TableName": self.messages_table,
                "KeyConditionExpression": "conversation_id = :c",
                "ExpressionAttributeValues": self._values({":c": conversation_id}),
                "ProjectionExpression": "message_key",
                "ConsistentRead": True,
            },
        )
        return {item["message_key"] for item in items}

    def _batch_items(self, conversation_id: str, batch_id: str) -> list[Record]:
        """The items of `batch_id`'s messages, oldest first. They are the newest: while a batch holds
        the lock, only it appends; so read back from the newest until a message is not its own."""
        kwargs = {
            "TableName": self.messages_table,
            "IndexName": SEQ_INDEX,
            "KeyConditionExpression": "conversation_id = :c",
            "ExpressionAttributeValues": self._values({":c": conversation_id}),
            "ScanIndexForward": False,
            "ConsistentRead": True,
            "PaginationConfig": {"PageSize": 100},
        }
        batch = []
        with errors():
            for page in client("dynamodb").get_paginator("query").paginate(**kwargs):
                for item in map(self._decode, page["Items"]):
                    if item.get("batch_id") is None and item.get("no_reply"):
                        continue  # stage 1 notes a STOP under any lock
                    if item.get("batch_id") != batch_id:
                        return batch[::-1]
                    batch.append(item)
        return batch[::-1]

    def _write_messages(self, conversation_id: str, messages: list[Record], first_seq: int) -> set[str]:
        """Unconditional Puts (BatchWriteItem), seq from `first_seq`; returns the keys written. One item
        per message id: a repeated id (an import) keeps its first occurrence."""
        requests, keys = [], set()
        for seq, message in enumerate(messages, first_seq):
            item = self._message_item(conversation_id, message, seq)
            if item["message_key"]["S"] not in keys:
                keys.add(item["message_key"]["S"])
                requests.append({"PutRequest": {"Item": item}})
        self._batch_write(requests)
        return keys

    def _batch_write(self, requests: list[dict[str, Any]]) -> None:
        for chunk in chunks(requests, 25):
            drain("batch_write_item", {self.messages_table: chunk}, "UnprocessedItems")

    def _fenced(
        self, conversation_id: str, batch_id: str | None, fields: Record, remove: Sequence[str] = _LOCK_ATTRS
    ) -> Record | None:
        """An update only the lock's holder may make (by default an unlock), setting `fields`: the
        record after, or None when `batch_id` does not hold the lock. One UpdateItem, no read."""
        fence, values = _fence(batch_id)
        update = self._update_op(conversation_id, fields, fence, values, remove=remove)
        for _ in range(ATTEMPTS):
            try:
                return self._updated(update)
            except ConditionFailed as failed:
                if not failed.conflict:
                    return None
        raise contended(conversation_id)

    def _unchanged_state(self, record: Record, batch_id: str) -> tuple[str, dict[str, Any]]:
        """A condition that `batch_id` still holds the lock and neither messages nor pending ones changed."""
        fence, values = _fence(batch_id)
        same_seq, seq_values = counter_unchanged("last_message_seq", record.get("last_message_seq", 0))
        same_version, version_values = counter_unchanged("pending_version", record.get("pending_version", 0))
        return f"{fence} AND {same_seq} AND {same_version}", {**values, **seq_values, **version_values}

    def _update_op(
        self,
        conversation_id: str,
        fields: Record,
        condition: str,
        values: dict[str, Any],
        remove: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The record's conditional Update (an UpdateItem's or a transaction's): `fields` set, `remove` gone.
        Their names go through placeholders: a record's fields may be DynamoDB reserved words (`owner`)."""
        expression = "SET " + ", ".join(f"#{name} = :{name}" for name in fields)
        if remove:
            expression += " REMOVE " + ", ".join(f"#{name}" for name in remove)
        update = self._op(
            conversation_id, expression, condition, {**values, **{f":{k}": v for k, v in fields.items()}}
        )
        update["ExpressionAttributeNames"] = {f"#{name}": name for name in [*fields, *remove]}
        return update

    def _op(
        self, conversation_id: str, expression: str, condition: str, values: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "TableName": self.table,
            "Key": self._key(conversation_id),
            "UpdateExpression": expression,
            # no redundant parentheses: DynamoDB refuses them
            "ConditionExpression": f"attribute_exists(conversation_id) AND {condition}",
            "ExpressionAttributeValues": self._values(values),
        }

    def _update(
        self, conversation_id: str, expression: str, condition: str, values: dict[str, Any]
    ) -> Record:
        """One conditional UpdateItem: the record after; ConditionFailed when the condition does not hold."""
        return self._updated(self._op(conversation_id, expression, condition, values))

    def _updated(self, update: dict[str, Any]) -> Record:
        response = conditional("update_item", **update, ReturnValues="ALL_NEW")
        return without("messages", self._decode(response["Attributes"]))

    def _put(self, conversation_id: str, message: Record, seq: int) -> dict[str, Any]:
        """A transaction's Put of a new message: refused when its id is in the conversation already."""
        return {
            "Put": {
                "TableName": self.messages_table,
                "Item": self._message_item(conversation_id, message, seq),
                "ConditionExpression": "attribute_not_exists(message_key)",
            }
        }

    def _absent(self, conversation_id: str, message_id: str) -> dict[str, Any]:
        """A transaction's check that no message with this id is in the conversation."""
        return {
            "ConditionCheck": {
                "TableName": self.messages_table,
                "Key": self._message_key(conversation_id, message_id),
                "ConditionExpression": "attribute_not_exists(message_key)",
            }
        }

    def _message_item(self, conversation_id: str, message: Record, seq: int) -> dict[str, Any]:
        key = message.get("message_id") or f"#{seq}"
        return self._item({**message, "conversation_id": conversation_id, "message_key": key, "seq": seq})

    def _pointers(self, conversation_id: str, reply: Record) -> list[dict[str, Any]]:
        """A transaction's Puts of the items that lead a status callback from a provider id to the reply."""
        target = reply.get("message_id")
        return [
            {
                "Put": {
                    "TableName": self.messages_table,
                    "Item": {
                        **self._pointer_key(pid),
                        "target_conversation_id": {"S": conversation_id},
                        "target_message_key": {"S": target},
                    },
                }
            }
            for pid in provider_ids(reply)
        ]

    def _pointer_key(self, provider_id: str) -> dict[str, Any]:
        """MessagesTable keys no conversation uses: `delivery#<provider id>`, `delivery`."""
        return self._message_key(f"delivery#{provider_id}", "delivery")

    def _message_key(self, conversation_id: str, key: str) -> dict[str, Any]:
        return {"conversation_id": {"S": conversation_id}, "message_key": {"S": key}}

    def _records(self, operation: str, **kwargs: Any) -> list[Record]:
        return [without("messages", record) for record in self._items(operation, kwargs)]

    def _items(
        self, operation: str, kwargs: dict[str, Any], pagination: dict[str, int] | None = None
    ) -> list[Record]:
        items = []
        with errors():
            pages = (
                client("dynamodb")
                .get_paginator(operation)
                .paginate(**kwargs, PaginationConfig=pagination or {})
            )
            for page in pages:
                items.extend(self._decode(item) for item in page["Items"])
        return items

    def _key(self, conversation_id: str) -> dict[str, Any]:
        return {"conversation_id": {"S": conversation_id}}

    def _values(self, values: dict[str, Any]) -> dict[str, Any]:
        return {name: self._serialize(to_dynamo(value)) for name, value in values.items()}

    def _item(self, record: Record) -> dict[str, Any]:
        return {name: self._serialize(to_dynamo(value)) for name, value in record.items()}

    def _decode(self, item: dict[str, Any]) -> Record:
        record = {name: from_dynamo(self._deserialize(value)) for name, value in item.items()}
        record.pop("gsi_locked", None)  # an index key, not part of the conversation
        return record


def _fence(batch_id: str | None) -> tuple[str, dict[str, Any]]:
    """A condition that `batch_id` holds the lock (None: a lock without an owner, for the sweeper)."""
    if batch_id is None:
        return "conversation_status = :locked_status AND attribute_not_exists(lock_owner)", {
            ":locked_status": PROCESSING_REPLY
        }
    return "conversation_status = :locked_status AND lock_owner = :holder", {
        ":locked_status": PROCESSING_REPLY,
        ":holder": batch_id,
    }


def _message(item: Record) -> Record:
    """A message item → the message as it was written."""
    return {k: v for k, v in item.items() if k not in _MESSAGE_ATTRS}
