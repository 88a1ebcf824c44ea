"""Records from before MessagesTable: tables from before kept `messages` in the record (and the oldest of
them in `{id}#archive#…` items with `archive_of`). `migrate()` (`replies-engine migrate`) moves them
into MessagesTable, the archived ones before the record's (seq ≤ 0). Every write path migrates a record
it finds in the old shape before it writes (`_current`; not its archives: finding those takes a Scan).
Reads do not: until then `messages()` shows the messages such a record still holds itself.

To be removed once no deployment holds a record in the old shape: when `replies-engine migrate` on
every table reports `"conversations": 0`, this module and the `_current` calls become plain reads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ...ports import Record
from .clients import client
from .dynamo import ATTEMPTS, ConditionFailed, contended, counter_unchanged, errors, length_unchanged


class LegacyShape:
    """The store's migration of old-shape records; the store provides the reads and writes it uses."""

    table: str
    _get: Any
    _items: Any
    _key: Any
    _update: Any
    _write_messages: Any

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
        for _ in range(ATTEMPTS):
            if current is None or "messages" not in current:
                break
            messages, seq = current["messages"], current.get("last_message_seq", 0)
            self._write_messages(conversation_id, messages, seq + 1)
            same_length, values = length_unchanged("messages", len(messages))
            same_seq, seq_values = counter_unchanged("last_message_seq", seq)
            try:
                current = self._update(
                    conversation_id,
                    "SET last_message_seq = :last REMOVE messages",
                    f"{same_length} AND {same_seq}",
                    {**values, **seq_values, ":last": seq + len(messages)},
                )
            except ConditionFailed:
                current = self._get(conversation_id)  # an old Lambda appended in between: again
                continue
            written += len(messages)
            break
        else:
            raise contended(conversation_id)
        with errors():
            for archive in ordered:
                client("dynamodb").delete_item(
                    TableName=self.table, Key=self._key(archive["conversation_id"])
                )
        return current, written

    def _current(self, conversation_id: str) -> Record | None:
        """The record, read to write: migrated first if it still carries `messages`."""
        record = self._get(conversation_id)
        if record is not None and "messages" in record:
            record = self._migrate_one(record)[0]
        return record
