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

Tables from before kept `messages` in the record (and the oldest of them in `{id}#archive#…` items
with `archive_of`): `migrate()` (`replies-engine migrate`) moves them into MessagesTable, the archived
ones before the record's (seq ≤ 0). Every write path migrates a record it finds in the old shape
before it writes (not its archives: finding those takes a Scan). Reads do not: until then
`messages()` shows the messages such a record still holds itself.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
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
from ...ports import LockOutcome, Record, StoreError, TransientStoreError
from .clients import client, error_code, translated_errors

LOCKED_INDEX = "gsi-locked"
LOCKED = "locked"
SEQ_INDEX = "lsi-seq"
MAX_NEW_MESSAGES = MAX_MESSAGES_PER_BATCH  # a transaction holds at most 100 items: the record and 99 messages
_ATTEMPTS = 5  # conditional writes lost to concurrent ones before giving up (transient)
_KEY_ATTRS = frozenset(attr for gsi in GSIS for attr in (gsi.company_attr, gsi.recipient_attr))
_MESSAGE_ATTRS = ("conversation_id", "message_key", "seq")  # the item's, not the message's
_LOCK_FREE = (
    "(attribute_not_exists(conversation_status) OR conversation_status <> :locked_status"
    " OR processing_started_at < :expiry)"
)
_LOCK_ATTRS = ("lock_owner", "gsi_locked", "sending")  # what an unlock removes
_RETRYABLE = frozenset({"None", "ConditionalCheckFailed", "TransactionConflict"})


def _errors():
    return translated_errors(StoreError, TransientStoreError)


class _ConditionFailed(Exception):
    """A conditional write did not apply; `reasons` has one code per item of a transaction."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__(", ".join(reasons))
        self.reasons = reasons

    @property
    def conflict(self) -> bool:
        """Another transaction held the item: no condition was even evaluated."""
        return "TransactionConflict" in self.reasons


class DynamoConversationStore:
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
        return _without("messages", record) if record else None

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
        with _errors():
            client("dynamodb").put_item(TableName=self.table, Item=self._item(item))

    def record_refused_message(self, conversation_id: str, message: Record) -> bool:
        for _ in range(_ATTEMPTS):
            record = self.get(conversation_id)
            if record is None:
                raise StoreError(f"conversation {conversation_id} does not exist")
            refused = record.get("refused_messages", [])
            if any(m.get("message_id") == message["message_id"] for m in refused):
                return False
            unchanged, length = _same_length("refused_messages", len(refused))
            try:
                self._update(
                    conversation_id,
                    "SET refused_messages = list_append(if_not_exists(refused_messages, :empty), :m)",
                    unchanged,
                    {":m": [message], ":empty": [], **length},
                )
                return True
            except _ConditionFailed:
                continue
        raise _contended(conversation_id)

    def write_unlocked(self, conversation_id: str, *, changes: Record, message: Record | None = None) -> bool:
        for _ in range(_ATTEMPTS):
            record = self._current(conversation_id)
            if record is None:
                raise StoreError(f"conversation {conversation_id} does not exist")
            seq = record.get("last_message_seq", 0)
            fields = inbound_changes(record, changes)
            if message is not None:
                fields = {**fields, "last_message_seq": seq + 1}
            unchanged, values = _unchanged("last_message_seq", seq)
            items = []
            if message is not None:
                items.append(self._put(conversation_id, message, seq + 1))
                if message.get("role") == "agent":
                    items.extend(self._pointers(conversation_id, message))
            try:
                self._commit(self._update_op(conversation_id, fields, unchanged, values), items)
            except _ConditionFailed as failed:
                if failed.reasons[:2] == ["None", "ConditionalCheckFailed"]:
                    return False  # the message is there already
                continue
            return True
        raise _contended(conversation_id)

    def lock_and_append(
        self,
        conversation_id: str,
        batch_id: str,
        messages: list[Record],
        *,
        now: float,
        lock_timeout_seconds: float,
    ) -> LockOutcome:
        for _ in range(_ATTEMPTS):
            record = self._current(conversation_id)
            if record is None:
                return LockOutcome("missing")
            fresh, duplicates = split_duplicates(self._stored(conversation_id, messages), messages)
            if not fresh:
                return LockOutcome("duplicates", duplicates=duplicates)
            if is_locked(record, now, lock_timeout_seconds):
                return LockOutcome("locked", duplicates=duplicates, lock_owner=record.get("lock_owner"))
            if len(fresh) > MAX_NEW_MESSAGES:
                raise StoreError(f"{len(fresh)} new messages in one batch: at most {MAX_NEW_MESSAGES}")
            seq = record.get("last_message_seq", 0)
            fields = {
                **lock_fields(record, batch_id, fresh, now),
                "gsi_locked": LOCKED,
                "last_message_seq": seq + len(fresh),
            }
            unchanged, values = _unchanged("last_message_seq", seq)
            values.update(
                {":locked_status": PROCESSING_REPLY, ":expiry": clock.iso(now - lock_timeout_seconds)}
            )
            try:
                self._commit(
                    self._update_op(conversation_id, fields, f"{_LOCK_FREE} AND {unchanged}", values),
                    [self._put(conversation_id, m, n) for n, m in enumerate(fresh, seq + 1)],
                )
            except _ConditionFailed:
                continue  # someone wrote in between: decide again on what is there now
            return LockOutcome(
                "acquired", record=_after(record, fields), appended=fresh, duplicates=duplicates
            )
        raise _contended(conversation_id)

    def add_pending(self, conversation_id: str, messages: list[Record], *, now: float) -> LockOutcome:
        for _ in range(_ATTEMPTS):
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
            if len(fresh) > MAX_NEW_MESSAGES:
                raise StoreError(f"{len(fresh)} new messages in one batch: at most {MAX_NEW_MESSAGES}")
            version = record.get("pending_version", 0)
            fields = {
                "pending_messages": [*pending, *fresh],
                "pending_version": version + 1,
                "updated_at": clock.iso(now),
            }
            unchanged, values = _unchanged("pending_version", version)
            try:
                self._commit(
                    self._update_op(conversation_id, fields, unchanged, values),
                    # not in the history either, when the transaction commits
                    [self._absent(conversation_id, m["message_id"]) for m in fresh if m.get("message_id")],
                )
            except _ConditionFailed:
                continue
            return LockOutcome("added", record=_after(record, fields), appended=fresh, duplicates=duplicates)
        raise _contended(conversation_id)

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
        unchanged, values = _unchanged("pending_version", pending_version)
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
            same_seq, seq_values = _unchanged("last_message_seq", seq)
            condition += f" AND {same_seq}"
            values.update(seq_values)
        try:
            self._commit(
                self._update_op(conversation_id, fields, condition, values),
                [self._put(conversation_id, m, n) for n, m in enumerate(moved, seq + 1)],
            )
        except _ConditionFailed:
            return LockOutcome("changed")  # a message or a lock came in between: the caller decides again
        if not moved:
            return LockOutcome("duplicates", duplicates=duplicates)
        return LockOutcome("acquired", record=_after(record, fields), appended=moved, duplicates=duplicates)

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
        for _ in range(_ATTEMPTS):
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
                self._commit(
                    self._update_op(conversation_id, written, condition, values, remove=_LOCK_ATTRS), items
                )
            except _ConditionFailed as failed:
                if failed.reasons[:2] == ["None", "ConditionalCheckFailed"]:
                    reply = None  # a message with its id is in the history already
                continue
            return _after(record, written, removed=_LOCK_ATTRS)
        raise _contended(conversation_id)

    def record_delivery(self, provider_id: str, status: str, error_code: str | None, *, now: float) -> str:
        """Two requests: the pointer item (GetItem), then the message's UpdateItem, conditioned on the
        status it holds being one that `status` moves forward from."""
        with _errors():
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
            self._conditional(
                "update_item",
                TableName=self.messages_table,
                Key=self._message_key(
                    pointer["target_conversation_id"]["S"], pointer["target_message_key"]["S"]
                ),
                UpdateExpression="SET " + ", ".join(f"{k} = :{k}" for k in fields),
                ConditionExpression=f"attribute_exists(message_key) AND {condition}",
                ExpressionAttributeValues=self._values({**names, **{f":{k}": v for k, v in fields.items()}}),
            )
        except _ConditionFailed:
            return "stale"
        return "recorded"

    def annotate_message(self, conversation_id: str, message_id: str, fields: Record) -> bool:
        names = {f"#f{i}": name for i, name in enumerate(fields)}
        try:
            self._conditional(
                "update_item",
                TableName=self.messages_table,
                Key=self._message_key(conversation_id, message_id),
                UpdateExpression="SET " + ", ".join(f"{n} = :v{i}" for i, n in enumerate(names)),
                ConditionExpression="attribute_exists(message_key)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=self._values({f":v{i}": v for i, v in enumerate(fields.values())}),
            )
        except _ConditionFailed:
            return False
        return True

    def count_turn(self, scope: str, day: str) -> int:
        """One UpdateItem (ADD) on a MessagesTable item no conversation uses: `ai_turns#<scope>`, `<day>`,
        expiring three days after its day began (the table's TTL)."""
        with _errors():
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
        with _errors():
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
        for _ in range(_ATTEMPTS):
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
                self._commit(
                    self._update_op(conversation_id, fields, condition, values, remove=_LOCK_ATTRS),
                    deletes[:MAX_NEW_MESSAGES],
                )
            except _ConditionFailed:
                continue
            # more than a transaction holds (a batch regenerated with 100+ messages, rare): the rest after
            # it; a crash in between leaves them in the history, where dedupe then keeps them
            self._batch_write(
                [{"DeleteRequest": {"Key": d["Delete"]["Key"]}} for d in deletes[MAX_NEW_MESSAGES:]]
            )
            return _after(record, fields, removed=_LOCK_ATTRS)
        raise _contended(conversation_id)

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

    def migrate(self) -> dict[str, int]:
        """Move every record's `messages` (and its archive items') into MessagesTable; returns
        `{"conversations": n, "messages": m}` of what it moved. Safe to run twice (a second run finds
        nothing), to resume after a crash, and beside old Lambdas still writing (it redoes a record
        they changed)."""
        archives: dict[str, list[str]] = defaultdict(list)
        conversation_ids = set()
        scan = {
            "TableName": self.table,
            "ProjectionExpression": "conversation_id, archive_of",
            "FilterExpression": "attribute_exists(messages)",
            "ConsistentRead": True,
        }
        for item in self._items("scan", scan):
            if "archive_of" in item:
                archives[item["archive_of"]].append(item["conversation_id"])
            else:
                conversation_ids.add(item["conversation_id"])
        conversations = messages = 0
        for conversation_id in sorted(conversation_ids | set(archives)):
            record = self._get(conversation_id)
            if record is None:
                continue  # the conversation is gone: its archives, if any, stay as they are
            found = [a for a in map(self._get, sorted(archives[conversation_id])) if a is not None]
            if "messages" in record or found:
                messages += self._migrate_one(record, found)[1]
                conversations += 1
        return {"conversations": conversations, "messages": messages}

    def _migrate_one(self, record: Record, archives: Sequence[Record] = ()) -> tuple[Record | None, int]:
        """One conversation into the new shape: its archives' messages, then the record's, as message
        items; then the record without `messages`; then the archives deleted. Returns the record after
        and how many messages were written.

        Item writes are unconditional Puts keyed by message id: a rerun rewrites the same items. The
        record's messages follow `last_message_seq` (1..n on a table from before); the archives' go
        below them (seq ≤ 0, the newest archive's last message at 0), so that the write paths can
        migrate a record without its archives (they cannot find them without a Scan) and `migrate()`
        add those later. Archives are deleted oldest first: after a crash, the seqs of those left stay.
        """
        conversation_id = record["conversation_id"]
        ordered = sorted(archives, key=lambda a: a["conversation_id"])  # `{id}#archive#{time}`: by time
        archived = [m for archive in ordered for m in archive.get("messages", [])]
        written = len(self._write_messages(conversation_id, archived, 1 - len(archived)))
        current: Record | None = record
        for _ in range(_ATTEMPTS):
            if current is None or "messages" not in current:
                break
            messages, seq = current["messages"], current.get("last_message_seq", 0)
            self._write_messages(conversation_id, messages, seq + 1)
            same_length, values = _same_length("messages", len(messages))
            same_seq, seq_values = _unchanged("last_message_seq", seq)
            try:
                current = self._update(
                    conversation_id,
                    "SET last_message_seq = :last REMOVE messages",
                    f"{same_length} AND {same_seq}",
                    {**values, **seq_values, ":last": seq + len(messages)},
                )
            except _ConditionFailed:
                current = self._get(conversation_id)  # an old Lambda appended in between: again
                continue
            written += len(messages)
            break
        else:
            raise _contended(conversation_id)
        with _errors():
            for archive in ordered:
                client("dynamodb").delete_item(
                    TableName=self.table, Key=self._key(archive["conversation_id"])
                )
        return current, written

    # --- helpers ---------------------------------------------------------------------------------

    def _current(self, conversation_id: str) -> Record | None:
        """The record, read to write: migrated first if it still carries `messages`."""
        record = self._get(conversation_id)
        if record is not None and "messages" in record:
            record = self._migrate_one(record)[0]
        return record

    def _get(self, conversation_id: str) -> Record | None:
        """The item as stored (an old-shape record with its `messages`)."""
        with _errors():
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
        for chunk in _chunks(ids, 100):
            request = {
                self.messages_table: {
                    "Keys": [self._message_key(conversation_id, i) for i in chunk],
                    "ConsistentRead": True,
                    "ProjectionExpression": "message_key",
                }
            }
            for response in self._drain("batch_get_item", request, "UnprocessedKeys"):
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
        with _errors():
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
        for chunk in _chunks(requests, 25):
            self._drain("batch_write_item", {self.messages_table: chunk}, "UnprocessedItems")

    def _drain(self, operation: str, request: dict[str, Any], unprocessed: str) -> list[dict[str, Any]]:
        """A batch request, again with what DynamoDB left unprocessed (throttled) until nothing is left."""
        responses = []
        with _errors():
            for attempt in range(_ATTEMPTS):
                response = getattr(client("dynamodb"), operation)(RequestItems=request)
                responses.append(response)
                request = response.get(unprocessed)
                if not request:
                    return responses
                time.sleep(0.05 * 2**attempt)
        raise TransientStoreError(f"{operation}: items still unprocessed after {_ATTEMPTS} attempts")

    def _commit(self, update: dict[str, Any], others: list[dict[str, Any]]) -> None:
        """The record's Update with the message items' operations, all or nothing; _ConditionFailed when
        a condition does not hold. Alone, the Update is a plain UpdateItem (half the cost)."""
        if not others:
            self._conditional("update_item", **update)
            return
        self._conditional(
            "transact_write_items",
            TransactItems=[{"Update": update}, *others],
            # botocore's retry of a request that did commit commits nothing twice
            ClientRequestToken=uuid.uuid4().hex,
        )

    def _conditional(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One conditional request; its refusals as _ConditionFailed, the rest in the ports' terms."""
        from botocore.exceptions import ClientError

        with _errors():
            try:
                return getattr(client("dynamodb"), operation)(**kwargs)
            except ClientError as exc:
                code = error_code(exc)
                reasons = {
                    "ConditionalCheckFailedException": ["ConditionalCheckFailed"],
                    "TransactionConflictException": ["TransactionConflict"],
                }.get(code) or [r.get("Code") or "None" for r in exc.response.get("CancellationReasons", [])]
                if code == "TransactionCanceledException" and "ThrottlingError" in reasons:
                    raise TransientStoreError(f"{code}: {exc}") from exc
                if not reasons or not set(reasons) <= _RETRYABLE:
                    raise
                if "TransactionConflict" in reasons:
                    time.sleep(random.uniform(0.01, 0.05))  # the other transaction is done in milliseconds
                raise _ConditionFailed(reasons) from exc

    def _fenced(
        self, conversation_id: str, batch_id: str | None, fields: Record, remove: Sequence[str] = _LOCK_ATTRS
    ) -> Record | None:
        """An update only the lock's holder may make (by default an unlock), setting `fields`: the
        record after, or None when `batch_id` does not hold the lock. One UpdateItem, no read."""
        fence, values = _fence(batch_id)
        update = self._update_op(conversation_id, fields, fence, values, remove=remove)
        for _ in range(_ATTEMPTS):
            try:
                return self._updated(update)
            except _ConditionFailed as failed:
                if not failed.conflict:
                    return None
        raise _contended(conversation_id)

    def _unchanged_state(self, record: Record, batch_id: str) -> tuple[str, dict[str, Any]]:
        """A condition that `batch_id` still holds the lock and neither messages nor pending ones changed."""
        fence, values = _fence(batch_id)
        same_seq, seq_values = _unchanged("last_message_seq", record.get("last_message_seq", 0))
        same_version, version_values = _unchanged("pending_version", record.get("pending_version", 0))
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
        """One conditional UpdateItem: the record after; _ConditionFailed when the condition does not hold."""
        return self._updated(self._op(conversation_id, expression, condition, values))

    def _updated(self, update: dict[str, Any]) -> Record:
        response = self._conditional("update_item", **update, ReturnValues="ALL_NEW")
        return _without("messages", self._decode(response["Attributes"]))

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
        return [_without("messages", record) for record in self._items(operation, kwargs)]

    def _items(
        self, operation: str, kwargs: dict[str, Any], pagination: dict[str, int] | None = None
    ) -> list[Record]:
        items = []
        with _errors():
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
        return {name: self._serialize(_to_dynamo(value)) for name, value in values.items()}

    def _item(self, record: Record) -> dict[str, Any]:
        return {name: self._serialize(_to_dynamo(value)) for name, value in record.items()}

    def _decode(self, item: dict[str, Any]) -> Record:
        record = {name: _from_dynamo(self._deserialize(value)) for name, value in item.items()}
        record.pop("gsi_locked", None)  # an index key, not part of the conversation
        return record


def _contended(conversation_id: str) -> TransientStoreError:
    return TransientStoreError(f"conversation {conversation_id}: too many concurrent writes")


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


def _unchanged(attribute: str, value: int) -> tuple[str, dict[str, Any]]:
    """A condition that the counter `attribute` is still `value` (absent counts as 0)."""
    placeholder = f":was_{attribute}"
    if value == 0:
        return f"(attribute_not_exists({attribute}) OR {attribute} = {placeholder})", {placeholder: 0}
    return f"{attribute} = {placeholder}", {placeholder: value}


def _same_length(attribute: str, length: int) -> tuple[str, dict[str, Any]]:
    """A condition that `attribute` (a list) still has the `length` that was read."""
    placeholder = f":length_of_{attribute}"
    condition = f"size({attribute}) = {placeholder}"
    if length == 0:
        condition = f"(attribute_not_exists({attribute}) OR {condition})"
    return condition, {placeholder: length}


def _after(record: Record, fields: Record, removed: Sequence[str] = ()) -> Record:
    """The record a committed write left: what was read, `fields` set, `removed` gone (a transaction
    returns no attributes)."""
    after = {k: v for k, v in {**record, **fields}.items() if k not in removed}
    after.pop("gsi_locked", None)
    return after


def _without(name: str, record: Record) -> Record:
    return {k: v for k, v in record.items() if k != name}


def _message(item: Record) -> Record:
    """A message item → the message as it was written."""
    return {k: v for k, v in item.items() if k not in _MESSAGE_ATTRS}


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _to_dynamo(value: Any) -> Any:
    """JSON-like values → what DynamoDB stores: floats become Decimals."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_dynamo(v) for v in value]
    return value


def _from_dynamo(value: Any) -> Any:
    """DynamoDB values → JSON-like ones: Decimals become ints or floats, sets sorted lists."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(_from_dynamo(v) for v in value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value
