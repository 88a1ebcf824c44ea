"""MessagesTable: a conversation's messages, one item each, and the small items that share the table.

A message's item: partition key `conversation_id`, sort key `message_key` (its `message_id`, or `#<seq>`
when it has none), `seq` its place in the conversation, ordered by the local index `lsi-seq`. So an
append writes one small item whatever the length of the history, and the message id as key makes
deduplication a condition on the item itself (`attribute_not_exists(message_key)`).

Keys no conversation uses hold the rest: `delivery#<provider id>` points a status callback to the
reply it names; `ai_turns#<scope>` counts the AI's turns per day (expiring with the table's TTL).

With MESSAGE_RETENTION_DAYS, a message's item and its delivery pointers carry `expires_at`, the
message's time plus that many days: DynamoDB's TTL deletes them (within a few days of that time).
"""

from __future__ import annotations

from typing import Any

from ... import clock, decisions
from ...conversation import DELIVERY_FINAL, DELIVERY_ORDER, delivery_moves, provider_ids
from ...ports import Record
from .clients import client
from .dynamo import ConditionFailed, chunks, conditional, decode, drain, encode, errors, pages

SEQ_INDEX = "lsi-seq"
_ITEM_ATTRS = ("conversation_id", "message_key", "seq", "expires_at")  # the item's, not the message's
_ABSENT = "attribute_not_exists(message_key)"


class MessagesTable:
    def __init__(self, name: str, retention_days: int = 0) -> None:
        self.name = name
        self.retention_seconds = retention_days * 86_400

    # --- reads -----------------------------------------------------------------------------------

    def read(self, conversation_id: str, last: int | None = None) -> list[Record]:
        """A Query on `lsi-seq`: oldest first; with `last`, the newest `last` read backwards, then turned."""
        kwargs: dict[str, Any] = {**self._of(conversation_id), "IndexName": SEQ_INDEX}
        if last is None:
            return [message(item) for item in pages("query", kwargs)]
        kwargs["ScanIndexForward"] = False
        return [message(item) for item in pages("query", kwargs, {"MaxItems": last, "PageSize": last})[::-1]]

    def stored(self, conversation_id: str, messages: list[Record]) -> list[Record]:
        """Those of `messages` already in the conversation, as `{"message_id"}` (one BatchGetItem per 100)."""
        ids = list(dict.fromkeys(m["message_id"] for m in messages if m.get("message_id")))
        found: list[str] = []
        for chunk in chunks(ids, 100):
            request = {
                self.name: {
                    "Keys": [self.key(conversation_id, i) for i in chunk],
                    "ConsistentRead": True,
                    "ProjectionExpression": "message_key",
                }
            }
            for response in drain("batch_get_item", request, "UnprocessedKeys"):
                found.extend(item["message_key"]["S"] for item in response["Responses"].get(self.name, []))
        return [{"message_id": message_id} for message_id in found]

    def stored_keys(self, conversation_id: str) -> set[str]:
        items = pages("query", {**self._of(conversation_id), "ProjectionExpression": "message_key"})
        return {item["message_key"] for item in items}

    def batch(self, conversation_id: str, batch_id: str) -> list[Record]:
        """The items of `batch_id`'s messages, oldest first. They are the newest: while a batch holds
        the lock, only it appends; so read back from the newest until a message is not its own."""
        kwargs = {
            **self._of(conversation_id),
            "IndexName": SEQ_INDEX,
            "ScanIndexForward": False,
            "PaginationConfig": {"PageSize": 100},
        }
        batch: list[Record] = []
        with errors():
            for page in client("dynamodb").get_paginator("query").paginate(**kwargs):
                for item in map(decode, page["Items"]):
                    if item.get("batch_id") is None and item.get("no_reply"):
                        continue  # stage 1 notes a STOP under any lock
                    if item.get("batch_id") != batch_id:
                        return batch[::-1]
                    batch.append(item)
        return batch[::-1]

    # --- a transaction's operations --------------------------------------------------------------

    def put(self, conversation_id: str, message: Record, seq: int) -> dict[str, Any]:
        """A new message: refused when its id is in the conversation already."""
        return {
            "Put": {
                "TableName": self.name,
                "Item": self._item(conversation_id, message, seq),
                "ConditionExpression": _ABSENT,
            }
        }

    def absent(self, conversation_id: str, message_id: str) -> dict[str, Any]:
        """A check that no message with this id is in the conversation."""
        return {
            "ConditionCheck": {
                "TableName": self.name,
                "Key": self.key(conversation_id, message_id),
                "ConditionExpression": _ABSENT,
            }
        }

    def delete(self, item: Record) -> dict[str, Any]:
        return {
            "Delete": {"TableName": self.name, "Key": self.key(item["conversation_id"], item["message_key"])}
        }

    def pointers(self, conversation_id: str, reply: Record) -> list[dict[str, Any]]:
        """The items that lead a status callback from a provider id to the reply."""
        target = {
            "target_conversation_id": {"S": conversation_id},
            "target_message_key": {"S": reply["message_id"]},
        }
        return [
            {
                "Put": {
                    "TableName": self.name,
                    "Item": {**self._pointer_key(pid), **target, **self._expiry(reply)},
                }
            }
            for pid in provider_ids(reply)
        ]

    # --- plain writes ----------------------------------------------------------------------------

    def write(self, conversation_id: str, messages: list[Record], first_seq: int) -> set[str]:
        """Unconditional Puts (BatchWriteItem), seq from `first_seq`; returns the keys written. One item
        per message id: a repeated id (an import) keeps its first occurrence."""
        requests, keys = [], set()
        for seq, entry in enumerate(messages, first_seq):
            item = self._item(conversation_id, entry, seq)
            if item["message_key"]["S"] not in keys:
                keys.add(item["message_key"]["S"])
                requests.append({"PutRequest": {"Item": item}})
        self.batch_write(requests)
        return keys

    def erase(self, conversation_id: str) -> int:
        """Delete every item of the conversation and the delivery pointers its replies have; how many."""
        items = pages("query", self._of(conversation_id))
        deletes = [self.key(conversation_id, item["message_key"]) for item in items]
        deletes += [self._pointer_key(pid) for item in items for pid in provider_ids(item)]
        self.batch_write([{"DeleteRequest": {"Key": key}} for key in deletes])
        return len(items)

    def remove(self, conversation_id: str, keys: set[str]) -> None:
        self.batch_write([{"DeleteRequest": {"Key": self.key(conversation_id, k)}} for k in keys])

    def batch_write(self, requests: list[dict[str, Any]]) -> None:
        for chunk in chunks(requests, 25):
            drain("batch_write_item", {self.name: chunk}, "UnprocessedItems")

    def record_delivery(self, provider_id: str, status: str, error_code: str | None, now: float) -> str:
        """Two requests: the pointer item (GetItem), then the message's UpdateItem, conditioned on the
        status it holds being one that `status` moves forward from."""
        with errors():
            pointer = (
                client("dynamodb")
                .get_item(TableName=self.name, Key=self._pointer_key(provider_id), ConsistentRead=True)
                .get("Item")
            )
        if pointer is None:
            return "unknown"
        fields = decisions.delivery({}, status, error_code, now)
        earlier = [s for s in (*DELIVERY_ORDER, *DELIVERY_FINAL) if delivery_moves(s, status)]
        names = {f":from{i}": s for i, s in enumerate(earlier)}
        condition = "attribute_not_exists(delivery_status)"
        if names:
            condition = f"({condition} OR delivery_status IN ({', '.join(names)}))"
        target = self.key(pointer["target_conversation_id"]["S"], pointer["target_message_key"]["S"])
        if not self.update(target, fields or {}, f"attribute_exists(message_key) AND {condition}", names):
            return "stale"
        return "recorded"

    def update(
        self, key: dict[str, Any], fields: Record, condition: str, values: Record | None = None
    ) -> bool:
        """One conditional UpdateItem setting `fields`: did it apply?"""
        names = {f"#f{i}": name for i, name in enumerate(fields)}
        try:
            conditional(
                "update_item",
                TableName=self.name,
                Key=key,
                UpdateExpression="SET " + ", ".join(f"{n} = :v{i}" for i, n in enumerate(names)),
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=encode(
                    {**(values or {}), **{f":v{i}": v for i, v in enumerate(fields.values())}}
                ),
            )
        except ConditionFailed:
            return False
        return True

    def count_turn(self, scope: str, day: str) -> int:
        """One UpdateItem (ADD) on `ai_turns#<scope>`, `<day>`, expiring three days after its day began."""
        with errors():
            answer = client("dynamodb").update_item(
                TableName=self.name,
                Key=self.key(f"ai_turns#{scope}", day),
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
                .get_item(TableName=self.name, Key=self.key(f"ai_turns#{scope}", day), ConsistentRead=True)
                .get("Item")
            )
        return int(item["turns"]["N"]) if item else 0

    # --- keys --------------------------------------------------------------------------------------

    def key(self, conversation_id: str, key: str) -> dict[str, Any]:
        return {"conversation_id": {"S": conversation_id}, "message_key": {"S": key}}

    def _pointer_key(self, provider_id: str) -> dict[str, Any]:
        return self.key(f"delivery#{provider_id}", "delivery")

    def _item(self, conversation_id: str, entry: Record, seq: int) -> dict[str, Any]:
        key = entry.get("message_id") or f"#{seq}"
        item = encode({**entry, "conversation_id": conversation_id, "message_key": key, "seq": seq})
        return {**item, **self._expiry(entry)}

    def _expiry(self, entry: Record) -> dict[str, Any]:
        """`expires_at` for TTL: the message's time (else now) plus the retention; nothing without one."""
        if not self.retention_seconds:
            return {}
        try:
            written = clock.parse_iso(entry["timestamp"])
        except (KeyError, TypeError, ValueError):
            written = clock.now()
        return {"expires_at": {"N": str(int(written) + self.retention_seconds)}}

    def _of(self, conversation_id: str) -> dict[str, Any]:
        """A consistent Query of the conversation's items."""
        return {
            "TableName": self.name,
            "KeyConditionExpression": "conversation_id = :c",
            "ExpressionAttributeValues": encode({":c": conversation_id}),
            "ConsistentRead": True,
        }


def message(item: Record) -> Record:
    """A message item → the message as it was written."""
    return {k: v for k, v in item.items() if k not in _ITEM_ATTRS}
