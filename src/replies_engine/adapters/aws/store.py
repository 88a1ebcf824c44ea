"""ConversationStore on DynamoDB: ConversationsTable for the records, MessagesTable (`messages.py`) for
the messages.

A record holds the conversation's state (its fields, `pending_messages`, `refused_messages`) and
`last_message_seq`, the `seq` of its newest message; never its `messages`.

Each conditional operation reads the record (and, with one BatchGetItem, which of its messages are
stored already), lets `decisions.py` decide, as the SQLite store does, then writes ONE
TransactWriteItems: the record's conditional Update and the messages' conditional Puts (or
ConditionChecks, Deletes). The Update's condition re-checks what the decision rested on: the lock is
free (or its lease expired, or `batch_id` holds it), `last_message_seq` (and where it matters
`pending_version`) is the one read; so a concurrent write cancels the transaction, and the operation
reads and decides again. A write without message items is one conditional UpdateItem.

Locked records carry `gsi_locked = "locked"`, the partition key of the sparse `gsi-locked` index:
the sweeper queries that index, never scans the table.

Records from before MessagesTable are migrated by `migration.py`; the DynamoDB toolkit is `dynamo.py`.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from typing import Any

from ... import clock, decisions
from ...channels import GSIS, Gsi
from ...conversation import PERSON_FIELDS, PROCESSING_REPLY, holds, readable
from ...decisions import MAX_MESSAGES_PER_BATCH, Write
from ...ports import LockOutcome, Record, StoreError
from .clients import client
from .dynamo import (
    ATTEMPTS,
    ConditionFailed,
    after,
    commit,
    conditional,
    contended,
    counter_unchanged,
    decode,
    encode,
    errors,
    length_unchanged,
    pages,
    without,
)
from .messages import MessagesTable, message
from .migration import LegacyShape

LOCKED_INDEX = "gsi-locked"
LOCKED = "locked"
_KEY_ATTRS = frozenset(attr for gsi in GSIS for attr in (gsi.company_attr, gsi.recipient_attr))
_LOCK_FREE = (
    "(attribute_not_exists(conversation_status) OR conversation_status <> :locked_status"
    " OR processing_started_at < :expiry)"
)
_UNLOCKED = (*decisions.LOCK_FIELDS, "gsi_locked")  # what an unlock removes


class DynamoConversationStore(LegacyShape):
    """The ConversationStore port on DynamoDB: `table` the conversations, `messages_table` the messages."""

    def __init__(self, table: str, messages_table: str, retention_days: int = 0) -> None:
        self.table = table
        self.messages_table = MessagesTable(messages_table, retention_days)

    # --- reads -----------------------------------------------------------------------------------

    def find_active(self, gsi: Gsi, company: str, recipient: str) -> list[Record]:
        return self._records(
            "query",
            TableName=self.table,
            IndexName=gsi.name,
            KeyConditionExpression="#c = :c AND #r = :r",
            FilterExpression="task_complete = :zero",  # a placeholder: a literal 0 matches nothing on moto
            ExpressionAttributeNames={"#c": gsi.company_attr, "#r": gsi.recipient_attr},
            ExpressionAttributeValues=encode({":c": company, ":r": recipient, ":zero": 0}),
        )

    def get(self, conversation_id: str) -> Record | None:
        record = self._get(conversation_id)
        return without("messages", record) if record else None

    def messages(self, conversation_id: str, *, last: int | None = None) -> list[Record]:
        if last is not None and last <= 0:
            return []
        found = self.messages_table.read(conversation_id, last)
        if not found:  # a record from before `replies-engine migrate` still holds its own
            old = (self._get(conversation_id) or {}).get("messages", [])
            return old[-last:] if last else old
        return found

    def list(self, status: str | None = None) -> builtins.list[Record]:
        """Tooling only: a paginated Scan (the archives of a table not yet migrated left out)."""
        kwargs: dict[str, Any] = {"FilterExpression": "attribute_not_exists(archive_of)"}
        if status is not None:
            kwargs.update(
                FilterExpression="attribute_not_exists(archive_of) AND conversation_status = :s",
                ExpressionAttributeValues=encode({":s": status}),
            )
        records = self._records("scan", TableName=self.table, **kwargs)
        return sorted(records, key=lambda r: r["conversation_id"])

    def find_person(self, field: str, value: str) -> builtins.list[Record]:
        if field not in PERSON_FIELDS:
            raise ValueError(f"{field} does not name a person")
        records = self._records(
            "scan",
            TableName=self.table,
            FilterExpression="#f = :v",
            ExpressionAttributeNames={"#f": field},
            ExpressionAttributeValues=encode({":v": value}),
        )
        return sorted(records, key=lambda r: str(r.get("created_at")))

    def erase(self, conversation_id: str, *, now: float) -> dict[str, int]:
        try:  # first: no batch appends to it from now on
            self._update(
                conversation_id,
                "SET erased_at = if_not_exists(erased_at, :now)",
                "attribute_exists(conversation_id)",
                {":now": clock.iso(now)},
            )
        except ConditionFailed:
            return {"messages": 0, "queued": 0, "outbox": 0}  # no such conversation
        gone = self.messages_table.erase(conversation_id)
        record = self.get(conversation_id) or {"conversation_id": conversation_id}
        with errors():  # the whole item replaced: every attribute the tombstone does not keep is gone
            client("dynamodb").put_item(TableName=self.table, Item=encode(decisions.tombstone(record, now)))
        # a stage 1 write that found the record just before the tombstone: its message goes too
        gone += self.messages_table.erase(conversation_id)
        return {"messages": gone, "queued": 0, "outbox": 0}  # SQS cannot be searched: the stages discard

    def list_locked(self) -> builtins.list[Record]:
        return self._records(
            "query",
            TableName=self.table,
            IndexName=LOCKED_INDEX,
            KeyConditionExpression="gsi_locked = :locked",
            ExpressionAttributeValues=encode({":locked": LOCKED}),
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
        stored = self.messages_table.stored_keys(conversation_id)
        self.messages_table.remove(
            conversation_id, stored - self._write_messages(conversation_id, messages, 1)
        )
        with errors():
            client("dynamodb").put_item(TableName=self.table, Item=encode(item))

    def record_refused_message(self, conversation_id: str, message: Record) -> bool:
        for _ in range(ATTEMPTS):
            record = self.get(conversation_id)
            if record is None:
                raise StoreError(f"conversation {conversation_id} does not exist")
            if decisions.refuse(record, message) is None:
                return False
            unchanged, length = length_unchanged("refused_messages", len(record.get("refused_messages", [])))
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
            if record.get("erased_at"):
                return False  # erased: nothing of the person's is written back
            seq = record.get("last_message_seq", 0)
            fields = decisions.inbound_changes(record, changes)
            items = []
            if message is not None:
                fields = {**fields, "last_message_seq": seq + 1}
                items.append(self.messages_table.put(conversation_id, message, seq + 1))
                if decisions.indexed(message):
                    items.extend(self.messages_table.pointers(conversation_id, message))
            unchanged, values = counter_unchanged("last_message_seq", seq)
            unchanged += " AND attribute_not_exists(erased_at)"  # an erasure that began since the read
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
        messages: builtins.list[Record],
        *,
        now: float,
        lock_timeout_seconds: float,
    ) -> LockOutcome:
        def decide(record: Record) -> Write:
            stored = self.messages_table.stored(conversation_id, messages)
            return decisions.lock(
                record, stored, batch_id, messages, now=now, lock_timeout_seconds=lock_timeout_seconds
            )

        return self._decided(conversation_id, decide, _LOCK_FREE, now - lock_timeout_seconds)

    def add_pending(
        self, conversation_id: str, messages: builtins.list[Record], *, now: float
    ) -> LockOutcome:
        def decide(record: Record) -> Write:
            waiting = {m.get("message_id") for m in record.get("pending_messages", [])}
            stored = self.messages_table.stored(
                conversation_id, [m for m in messages if m.get("message_id") not in waiting]
            )
            return decisions.add_pending(record, stored, messages, now=now)

        return self._decided(conversation_id, decide, with_record=True)

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
        def decide(record: Record) -> Write:
            pending = readable(record.get("pending_messages", []))
            return decisions.flush(
                record,
                self.messages_table.stored(conversation_id, pending),
                batch_id,
                pending_version=pending_version,
                now=now,
                lock_timeout_seconds=lock_timeout_seconds,
                held=held,
            )

        if held:
            lock, values = _fence(batch_id)
            return self._decided(conversation_id, decide, lock, values=values, once=True)
        return self._decided(conversation_id, decide, _LOCK_FREE, now - lock_timeout_seconds, once=True)

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
        fields = decisions.release(status, now, changes)
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
                [
                    self.messages_table.put(conversation_id, reply, seq + 1),
                    *self.messages_table.pointers(conversation_id, reply),
                ]
                if reply is not None
                else []
            )
            try:
                commit(self._update_op(conversation_id, written, condition, values, remove=_UNLOCKED), items)
            except ConditionFailed as failed:
                if failed.reasons[:2] == ["None", "ConditionalCheckFailed"]:
                    reply = None  # a message with its id is in the history already
                continue
            return after(record, written, removed=_UNLOCKED)
        raise contended(conversation_id)

    def assign(
        self, conversation_id: str, operator: str, *, take_over: bool, now: float
    ) -> tuple[bool, Record | None]:
        for _ in range(ATTEMPTS):
            record = self.get(conversation_id)
            if record is None:
                return False, None
            changes = decisions.claim(record, operator, take_over=take_over, now=now)
            if changes is None:
                return False, record
            holder = record.get("assigned_to")
            if holder:  # the claim as it was read (a hand-back leaves a NULL: unclaimed)
                condition, values = "assigned_to = :holder", {":holder": holder}
            else:
                condition = "(attribute_not_exists(assigned_to) OR attribute_type(assigned_to, :null))"
                values = {":null": "NULL"}
            try:
                return True, self._updated(self._update_op(conversation_id, changes, condition, values))
            except ConditionFailed:
                continue  # claimed meanwhile: decide again
        raise contended(conversation_id)

    def record_delivery(self, provider_id: str, status: str, error_code: str | None, *, now: float) -> str:
        return self.messages_table.record_delivery(provider_id, status, error_code, now)

    def prune_messages(self, before: float) -> int:
        return (
            0  # each message item carries `expires_at` (MESSAGE_RETENTION_DAYS): the table's TTL deletes it
        )

    def annotate_message(self, conversation_id: str, message_id: str, fields: Record) -> bool:
        key = self.messages_table.key(conversation_id, message_id)
        return self.messages_table.update(key, fields, "attribute_exists(message_key)")

    def count_turn(self, scope: str, day: str) -> int:
        return self.messages_table.count_turn(scope, day)

    def turns(self, scope: str, day: str) -> int:
        return self.messages_table.turns(scope, day)

    def emergency_unlock(
        self, conversation_id: str, batch_id: str, *, reason: str, now: float, to_pending: bool = False
    ) -> Record | None:
        for _ in range(ATTEMPTS):
            record = self._current(conversation_id)
            if record is None or not holds(record, batch_id):
                return None
            batch = self.messages_table.batch(conversation_id, batch_id)
            fields = decisions.emergency_unlock(
                record, [message(item) for item in batch], reason=reason, now=now, to_pending=to_pending
            )
            condition, values = self._unchanged_state(record, batch_id)
            deletes = [self.messages_table.delete(item) for item in batch]
            try:
                commit(
                    self._update_op(conversation_id, fields, condition, values, remove=_UNLOCKED),
                    deletes[:MAX_MESSAGES_PER_BATCH],
                )
            except ConditionFailed:
                continue
            # more than a transaction holds (a batch regenerated with 100+ messages, rare): the rest after
            # it; a crash in between leaves them in the history, where dedupe then keeps them
            self.messages_table.batch_write(
                [{"DeleteRequest": {"Key": d["Delete"]["Key"]}} for d in deletes[MAX_MESSAGES_PER_BATCH:]]
            )
            return after(record, fields, removed=_UNLOCKED)
        raise contended(conversation_id)

    def renew_lock(
        self, conversation_id: str, batch_id: str, *, now: float, changes: Record | None = None
    ) -> Record | None:
        """One UpdateItem fenced on `batch_id` holding the lock, no read."""
        return self._fenced(conversation_id, batch_id, decisions.renew(now, changes), remove=())

    def reset_stalled(self, conversation_id: str, batch_id: str, *, now: float) -> Record | None:
        return self._fenced(conversation_id, batch_id, decisions.reset_stalled(now))

    # --- helpers ---------------------------------------------------------------------------------

    def _decided(
        self,
        conversation_id: str,
        decide: Callable[[Record], Write],
        lock: str | None = None,
        expiry: float | None = None,
        *,
        values: dict[str, Any] | None = None,
        with_record: bool = False,
        once: bool = False,
    ) -> LockOutcome:
        """Read, `decide`, write what it decided in one transaction: the record's Update conditioned on
        `lock` (when the write takes it) and on the counters the decision read, the appended messages'
        Puts (or, pending, the checks that they are not in the history). A concurrent write cancels
        it: decide again (`once`: report `changed`, the caller decides)."""
        for _ in range(1 if once else ATTEMPTS):
            record = self._current(conversation_id)
            if record is None:
                return LockOutcome("missing")
            decision = decide(record)
            if not decision.writes:
                return decision.outcome(record if with_record else None)
            seq = record.get("last_message_seq", 0)
            fields, items = dict(decision.changes), []
            conditions = [counter_unchanged("pending_version", record.get("pending_version", 0))]
            if decision.status == "acquired":
                fields.update(gsi_locked=LOCKED, last_message_seq=seq + len(decision.append))
                items = [
                    self.messages_table.put(conversation_id, m, n)
                    for n, m in enumerate(decision.append, seq + 1)
                ]
                conditions.append(counter_unchanged("last_message_seq", seq))
            elif decision.status == "added":  # not in the history either, when the transaction commits
                items = [
                    self.messages_table.absent(conversation_id, m["message_id"]) for m in decision.append
                ]
            condition = " AND ".join(c for c, _ in conditions)
            all_values = {k: v for _, vs in conditions for k, v in vs.items()} | (values or {})
            if lock is not None and decision.status != "added":
                condition = f"{condition} AND {lock}"
                all_values[":locked_status"] = PROCESSING_REPLY
                if expiry is not None:
                    all_values[":expiry"] = clock.iso(expiry)
            try:
                commit(self._update_op(conversation_id, fields, condition, all_values), items)
            except ConditionFailed:
                continue  # someone wrote in between: decide again on what is there now
            return decision.outcome(
                after(record, fields) if decision.status in ("acquired", "added") else None
            )
        if once:
            return LockOutcome("changed")
        raise contended(conversation_id)

    def _get(self, conversation_id: str) -> Record | None:
        """The item as stored (an old-shape record with its `messages`)."""
        with errors():
            item = (
                client("dynamodb")
                .get_item(TableName=self.table, Key=self._key(conversation_id), ConsistentRead=True)
                .get("Item")
            )
        return self._decode(item) if item else None

    def _write_messages(
        self, conversation_id: str, messages: builtins.list[Record], first_seq: int
    ) -> set[str]:
        return self.messages_table.write(conversation_id, messages, first_seq)

    def _fenced(
        self, conversation_id: str, batch_id: str | None, fields: Record, remove: Sequence[str] = _UNLOCKED
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
            "ExpressionAttributeValues": encode(values),
        }

    def _update(
        self, conversation_id: str, expression: str, condition: str, values: dict[str, Any]
    ) -> Record:
        """One conditional UpdateItem: the record after; ConditionFailed when the condition does not hold."""
        return self._updated(self._op(conversation_id, expression, condition, values))

    def _updated(self, update: dict[str, Any]) -> Record:
        response = conditional("update_item", **update, ReturnValues="ALL_NEW")
        return without("messages", self._decode(response["Attributes"]))

    def _records(self, operation: str, **kwargs: Any) -> builtins.list[Record]:
        return [without("messages", record) for record in self._items(operation, kwargs)]

    def _items(self, operation: str, kwargs: dict[str, Any]) -> builtins.list[Record]:
        return [without("gsi_locked", item) for item in pages(operation, kwargs)]

    def _key(self, conversation_id: str) -> dict[str, Any]:
        return {"conversation_id": {"S": conversation_id}}

    def _decode(self, item: dict[str, Any]) -> Record:
        return without("gsi_locked", decode(item))  # an index key, not part of the conversation


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
