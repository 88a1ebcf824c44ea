"""ConversationStore on DynamoDB (ConversationsTable).

Each conditional operation reads the item, decides with the same rules as the SQLite backend
(`conversation.py`), then makes ONE conditional UpdateItem. Its condition re-checks what the decision
rested on: the lock is free (or its lease expired) and `messages` has the length that was read, so a
concurrent append or lock makes it fail, and the operation reads again.

Locked items carry `gsi_locked = "locked"`, the partition key of the sparse `gsi-locked` index:
the sweeper queries that index, never scans the table.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from ... import clock
from ...channels import GSIS, Gsi
from ...conversation import (
    PROCESSING_ERROR,
    PROCESSING_REPLY,
    PROCESSING_TIMEOUT,
    is_locked,
    lock_fields,
    split_duplicates,
)
from ...ports import LockOutcome, Record, StoreError, TransientStoreError
from .clients import client, error_code, translated_errors

ITEM_BUDGET = 350_000  # bytes of JSON; DynamoDB refuses items over 400 KB (409,600 bytes)
LOCKED_INDEX = "gsi-locked"
LOCKED = "locked"
_ATTEMPTS = 5  # conditional writes lost to concurrent ones before giving up (transient)
_KEY_ATTRS = frozenset(attr for gsi in GSIS for attr in (gsi.company_attr, gsi.recipient_attr))


def _errors():
    return translated_errors(StoreError, TransientStoreError)


class _ConditionFailed(Exception):
    pass


class DynamoConversationStore:
    def __init__(self, table: str) -> None:
        from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

        self.table = table
        self._serialize = TypeSerializer().serialize
        self._deserialize = TypeDeserializer().deserialize

    # --- reads -----------------------------------------------------------------------------------

    def find_active(self, gsi: Gsi, company: str, recipient: str) -> list[Record]:
        return self._query(
            IndexName=gsi.name,
            KeyConditionExpression="#c = :c AND #r = :r",
            FilterExpression="task_complete = :zero",  # a placeholder: a literal 0 matches nothing on moto
            ExpressionAttributeNames={"#c": gsi.company_attr, "#r": gsi.recipient_attr},
            ExpressionAttributeValues=self._values({":c": company, ":r": recipient, ":zero": 0}),
        )

    def get(self, conversation_id: str) -> Record | None:
        with _errors():
            item = (
                client("dynamodb")
                .get_item(TableName=self.table, Key=self._key(conversation_id), ConsistentRead=True)
                .get("Item")
            )
        return self._record(item) if item else None

    def list(self, status: str | None = None) -> list[Record]:
        """Tooling only: a paginated Scan (the archives of old messages left out)."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "attribute_not_exists(archive_of)",
        }
        if status is not None:
            kwargs.update(
                FilterExpression="attribute_not_exists(archive_of) AND conversation_status = :s",
                ExpressionAttributeValues=self._values({":s": status}),
            )
        records = self._paginate("scan", kwargs)
        return sorted(records, key=lambda r: r["conversation_id"])

    def list_locked(self) -> list[Record]:
        return self._query(
            IndexName=LOCKED_INDEX,
            KeyConditionExpression="gsi_locked = :locked",
            ExpressionAttributeValues=self._values({":locked": LOCKED}),
        )

    # --- writes ----------------------------------------------------------------------------------

    def put(self, record: Record) -> None:
        item = {k: v for k, v in record.items() if not (k in _KEY_ATTRS and v == "")}  # keys cannot be empty
        item.pop("gsi_locked", None)
        if item.get("conversation_status") == PROCESSING_REPLY:
            item["gsi_locked"] = LOCKED
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
            unchanged, length = self._same_length("refused_messages", len(refused))
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
        raise TransientStoreError(f"conversation {conversation_id}: too many concurrent writes")

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
            record = self.get(conversation_id)
            if record is None:
                return LockOutcome("missing")
            existing = record.get("messages", [])
            fresh, duplicates = split_duplicates(existing, messages)
            if not fresh:
                return LockOutcome("duplicates", duplicates=duplicates)
            if is_locked(record, now, lock_timeout_seconds):
                return LockOutcome("locked", duplicates=duplicates, lock_owner=record.get("lock_owner"))
            fields = {**lock_fields(batch_id, fresh, now), "gsi_locked": LOCKED}
            unchanged, length = self._same_length("messages", len(existing))
            kept = self._make_room(record, fresh)
            append = (
                "messages = list_append(if_not_exists(messages, :empty), :fresh)"
                if kept is None
                else "messages = :all"
            )
            condition = (
                "(attribute_not_exists(conversation_status) OR conversation_status <> :locked_status"
                f" OR processing_started_at < :expiry) AND {unchanged}"
            )
            try:
                updated = self._update(
                    conversation_id,
                    f"SET {append}, " + ", ".join(f"{name} = :{name}" for name in fields),
                    condition,
                    {
                        **({":fresh": fresh, ":empty": []} if kept is None else {":all": kept + fresh}),
                        ":locked_status": PROCESSING_REPLY,
                        ":expiry": clock.iso(now - lock_timeout_seconds),
                        **length,
                        **{f":{name}": value for name, value in fields.items()},
                    },
                )
            except _ConditionFailed:
                continue  # someone wrote in between: decide again on what is there now
            return LockOutcome("acquired", record=updated, appended=fresh, duplicates=duplicates)
        raise TransientStoreError(f"conversation {conversation_id}: too many concurrent writes")

    def add_pending(self, conversation_id: str, messages: list[Record], *, now: float) -> LockOutcome:
        for _ in range(_ATTEMPTS):
            record = self.get(conversation_id)
            if record is None:
                return LockOutcome("missing")
            pending = record.get("pending_messages", [])
            fresh, duplicates = split_duplicates([*record.get("messages", []), *pending], messages)
            if not fresh:
                return LockOutcome("duplicates", record=record, duplicates=duplicates)
            version = record.get("pending_version", 0)
            unchanged, values = self._same_version(version)
            try:
                updated = self._update(
                    conversation_id,
                    "SET pending_messages = list_append(if_not_exists(pending_messages, :empty), :fresh),"
                    " pending_version = :next, updated_at = :now",
                    unchanged,
                    {**values, ":fresh": fresh, ":empty": [], ":next": version + 1, ":now": clock.iso(now)},
                )
            except _ConditionFailed:
                continue
            return LockOutcome("added", record=updated, appended=fresh, duplicates=duplicates)
        raise TransientStoreError(f"conversation {conversation_id}: too many concurrent writes")

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
        record = self.get(conversation_id)
        if record is None:
            return LockOutcome("missing")
        if record.get("pending_version", 0) != pending_version:
            return LockOutcome("changed")
        ours = record.get("conversation_status") == PROCESSING_REPLY and record.get("lock_owner") == batch_id
        if (held and not ours) or (not held and is_locked(record, now, lock_timeout_seconds)):
            return LockOutcome("locked", lock_owner=record.get("lock_owner"))
        pending = [{**m, "batch_id": batch_id} for m in record.get("pending_messages", [])]
        fresh, duplicates = split_duplicates(record.get("messages", []), pending)
        unchanged, values = self._same_version(pending_version)
        if held:
            lock = "conversation_status = :locked_status AND lock_owner = :batch"
        else:
            lock = (
                "(attribute_not_exists(conversation_status) OR conversation_status <> :locked_status"
                " OR processing_started_at < :expiry)"
            )
        values.update({":locked_status": PROCESSING_REPLY, ":none": [], ":next": pending_version + 1})
        values.update({":batch": batch_id} if held else {":expiry": clock.iso(now - lock_timeout_seconds)})
        expression = "SET pending_messages = :none, pending_version = :next"
        if fresh:
            kept = self._make_room(record, fresh)
            fields = {**lock_fields(batch_id, fresh, now), "gsi_locked": LOCKED}
            expression += ", " + ", ".join(f"{name} = :{name}" for name in fields)
            if kept is None:
                expression += ", messages = list_append(if_not_exists(messages, :empty), :fresh)"
                values.update({":fresh": fresh, ":empty": []})
            else:
                expression += ", messages = :all"
                values[":all"] = kept + fresh
            values.update({f":{name}": value for name, value in fields.items()})
        try:
            updated = self._update(conversation_id, expression, f"{unchanged} AND {lock}", values)
        except _ConditionFailed:
            return LockOutcome("changed")  # a message or a lock came in between: the caller decides again
        if not fresh:
            return LockOutcome("duplicates", duplicates=duplicates)
        return LockOutcome("acquired", record=updated, appended=fresh, duplicates=duplicates)

    def release_lock(
        self, conversation_id: str, batch_id: str, *, status: str, now: float, reply: Record | None = None
    ) -> Record | None:
        expression = "SET conversation_status = :status, processing_completed_at = :now, updated_at = :now"
        values: dict[str, Any] = {":status": status, ":now": clock.iso(now)}
        if reply is not None:
            expression += ", messages = list_append(if_not_exists(messages, :empty), :reply)"
            values.update({":reply": [reply], ":empty": []})
        return self._fenced(conversation_id, batch_id, expression + " REMOVE lock_owner, gsi_locked", values)

    def emergency_unlock(
        self, conversation_id: str, batch_id: str, *, reason: str, now: float, to_pending: bool = False
    ) -> Record | None:
        for _ in range(_ATTEMPTS):
            record = self.get(conversation_id)
            if record is None or record.get("lock_owner") != batch_id:
                return None
            batch = [m for m in record.get("messages", []) if m.get("batch_id") == batch_id]
            kept = [m for m in record.get("messages", []) if m.get("batch_id") != batch_id]
            expression = (
                "SET messages = :kept, conversation_status = :status, last_error = :reason, updated_at = :now"
            )
            values: dict[str, Any] = {
                ":kept": kept,
                ":status": PROCESSING_ERROR,
                ":reason": reason,
                ":now": clock.iso(now),
            }
            condition = None
            if to_pending:  # debounce: back where they waited, for the next flush
                version = record.get("pending_version", 0)
                condition, version_values = self._same_version(version)
                restored = [{**m, "batch_id": None} for m in batch] + record.get("pending_messages", [])
                expression += ", pending_messages = :restored, pending_version = :next"
                values.update({**version_values, ":restored": restored, ":next": version + 1})
            try:
                return self._fenced(
                    conversation_id,
                    batch_id,
                    expression + " REMOVE lock_owner, gsi_locked",
                    values,
                    condition,
                )
            except _ConditionFailed:
                continue
        raise TransientStoreError(f"conversation {conversation_id}: too many concurrent writes")

    def reset_stalled(self, conversation_id: str, batch_id: str, *, now: float) -> Record | None:
        return self._fenced(
            conversation_id,
            batch_id,
            "SET conversation_status = :status, updated_at = :now REMOVE lock_owner, gsi_locked",
            {":status": PROCESSING_TIMEOUT, ":now": clock.iso(now)},
        )

    # --- helpers ---------------------------------------------------------------------------------

    def _make_room(self, record: Record, fresh: list[Record]) -> list[Record] | None:
        """None when `fresh` fits; else the recent messages to keep, the older ones written first to an
        archive item (`{conversation_id}#archive#…`, `archive_of` naming the conversation), so that the
        item stays under DynamoDB's limit and no message is lost. Dedupe sees only what is kept: an
        SQS redelivery comes minutes later, an archive holds messages far older than that."""
        if _size(record) + _size(fresh) <= ITEM_BUDGET:
            return None
        existing = record.get("messages", [])
        kept: list[Record] = []
        room = ITEM_BUDGET // 2 - _size({k: v for k, v in record.items() if k != "messages"}) - _size(fresh)
        for message in reversed(existing):
            room -= _size(message)
            if room < 0:
                break
            kept.insert(0, message)
        archived = existing[: len(existing) - len(kept)]
        archive_id = f"{record['conversation_id']}#archive#{clock.iso()}"
        with _errors():
            client("dynamodb").put_item(
                TableName=self.table,
                Item=self._item(
                    {
                        "conversation_id": archive_id,
                        "archive_of": record["conversation_id"],
                        "messages": archived,
                    }
                ),
            )
        return kept

    def _fenced(
        self,
        conversation_id: str,
        batch_id: str | None,
        expression: str,
        values: dict[str, Any],
        condition: str | None = None,
    ) -> Record | None:
        """An update only the lock's holder may make: the record after, or None when `batch_id` does
        not hold the lock. A failed extra `condition` raises _ConditionFailed (read again and retry)."""
        holder = "lock_owner = :holder" if batch_id is not None else "attribute_not_exists(lock_owner)"
        if batch_id is not None:
            values = {**values, ":holder": batch_id}
        fence = f"conversation_status = :locked_status AND {holder}"
        try:
            return self._update(
                conversation_id,
                expression,
                f"{fence} AND {condition}" if condition else fence,
                {**values, ":locked_status": PROCESSING_REPLY},
            )
        except _ConditionFailed:
            if condition and self._holds(conversation_id, batch_id):
                raise  # still ours: the extra condition failed
            return None

    def _holds(self, conversation_id: str, batch_id: str | None) -> bool:
        record = self.get(conversation_id)
        return (
            bool(record)
            and record.get("conversation_status") == PROCESSING_REPLY
            and record.get("lock_owner") == batch_id
        )

    @staticmethod
    def _same_version(version: int) -> tuple[str, dict[str, Any]]:
        """A condition that `pending_version` is still `version` (every change to the pending messages bumps it)."""
        if version == 0:
            return "(attribute_not_exists(pending_version) OR pending_version = :version)", {":version": 0}
        return "pending_version = :version", {":version": version}

    @staticmethod
    def _same_length(attribute: str, length: int) -> tuple[str, dict[str, Any]]:
        """A condition that `attribute` (a list) still has the `length` that was read."""
        placeholder = f":length_of_{attribute}"
        condition = f"size({attribute}) = {placeholder}"
        if length == 0:
            condition = f"(attribute_not_exists({attribute}) OR {condition})"
        return condition, {placeholder: length}

    def _update(
        self, conversation_id: str, expression: str, condition: str, values: dict[str, Any]
    ) -> Record:
        """One conditional UpdateItem; _ConditionFailed when the condition does not hold."""
        from botocore.exceptions import ClientError

        with _errors():
            try:
                response = client(
                    "dynamodb"
                ).update_item(
                    TableName=self.table,
                    Key=self._key(conversation_id),
                    UpdateExpression=expression,
                    ConditionExpression=f"attribute_exists(conversation_id) AND {condition}",  # no redundant parentheses: DynamoDB refuses them
                    ExpressionAttributeValues=self._values(values),
                    ReturnValues="ALL_NEW",
                )
            except ClientError as exc:
                if error_code(exc) == "ConditionalCheckFailedException":
                    raise _ConditionFailed from exc
                raise
        return self._record(response["Attributes"])

    def _query(self, **kwargs: Any) -> list[Record]:
        return self._paginate("query", {"TableName": self.table, **kwargs})

    def _paginate(self, operation: str, kwargs: dict[str, Any]) -> list[Record]:
        records = []
        with _errors():
            for page in client("dynamodb").get_paginator(operation).paginate(**kwargs):
                records.extend(self._record(item) for item in page["Items"])
        return records

    def _key(self, conversation_id: str) -> dict[str, Any]:
        return {"conversation_id": {"S": conversation_id}}

    def _values(self, values: dict[str, Any]) -> dict[str, Any]:
        return {name: self._serialize(_to_dynamo(value)) for name, value in values.items()}

    def _item(self, record: Record) -> dict[str, Any]:
        return {name: self._serialize(_to_dynamo(value)) for name, value in record.items()}

    def _record(self, item: dict[str, Any]) -> Record:
        record = {name: _from_dynamo(self._deserialize(value)) for name, value in item.items()}
        record.pop("gsi_locked", None)  # an index key, not part of the conversation
        return record


def _size(value: Any) -> int:
    """Bytes as JSON: a little over what DynamoDB counts for the same data, so a safe estimate."""
    return len(json.dumps(value, default=str, ensure_ascii=False).encode())


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
