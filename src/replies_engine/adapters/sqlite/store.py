"""ConversationStore on SQLite: each record is one JSON document, its GSI keys generated columns;
its messages are rows of their own (`messages`, keyed by conversation and order, unique by message
id), so no write rewrites the history and no read loads it unless asked.

Every conditional write is a read-check-write inside one `BEGIN IMMEDIATE` transaction (`_update`),
which is what DynamoDB's ConditionExpression gives the AWS backend.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Callable
from typing import Any

from ... import clock, decisions
from ...channels import Gsi
from ...conversation import PERSON_FIELDS, PROCESSING_REPLY, holds, provider_ids, readable
from ...ports import LockOutcome, Record, StoreError, TransientStoreError
from .database import Database, insert_messages, move_messages_out_of_records, translated_errors

Change = Callable[[Record, sqlite3.Connection], Any]


def _errors():
    return translated_errors(StoreError, TransientStoreError)


def _present(conn: sqlite3.Connection, conversation_id: str, messages: list[Record]) -> list[Record]:
    """Those of `messages`' ids already in the conversation (one indexed look-up each)."""
    ids = [m["message_id"] for m in messages]
    marks = ", ".join("?" * len(ids))
    rows = conn.execute(
        f"SELECT message_id FROM messages WHERE conversation_id = ? AND message_id IN ({marks})",
        (conversation_id, *ids),
    ).fetchall()
    return [{"message_id": row["message_id"]} for row in rows]


class SqliteConversationStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    def find_active(self, gsi: Gsi, company: str, recipient: str) -> list[Record]:
        # Column names come from the channel table, never from input.
        sql = (
            f"SELECT record FROM conversations INDEXED BY [{gsi.name}]"
            f" WHERE {gsi.company_attr} = ? AND {gsi.recipient_attr} = ? AND task_complete = 0"
        )
        return self._select(sql, (company, recipient))

    def get(self, conversation_id: str) -> Record | None:
        found = self._select("SELECT record FROM conversations WHERE conversation_id = ?", (conversation_id,))
        return found[0] if found else None

    def messages(self, conversation_id: str, *, last: int | None = None) -> list[Record]:
        if last is not None and last <= 0:
            return []
        sql = "SELECT message FROM messages WHERE conversation_id = ? ORDER BY seq DESC"
        args: tuple = (conversation_id,)
        if last is not None:
            sql, args = f"{sql} LIMIT ?", (conversation_id, last)
        with _errors():
            rows = self._db.connection().execute(sql, args).fetchall()
        return [json.loads(row["message"]) for row in reversed(rows)]

    def put(self, record: Record) -> None:
        record = dict(record)
        messages = record.pop("messages", [])
        with _errors(), self._db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO conversations (conversation_id, record) VALUES (?, ?)",
                (record["conversation_id"], json.dumps(record, ensure_ascii=False)),
            )
            conn.execute("DELETE FROM messages WHERE conversation_id = ?", (record["conversation_id"],))
            insert_messages(conn, record["conversation_id"], messages)

    def migrate(self) -> dict[str, int]:
        # Opening the database upgraded it already; this finds what a copy from before may have left.
        with _errors(), self._db.transaction() as conn:
            return move_messages_out_of_records(conn)

    def list(self, status: str | None = None) -> builtins.list[Record]:
        if status is None:
            return self._select("SELECT record FROM conversations ORDER BY conversation_id")
        return self._select(
            "SELECT record FROM conversations WHERE conversation_status = ? ORDER BY conversation_id",
            (status,),
        )

    def find_person(self, field: str, value: str) -> builtins.list[Record]:
        if field not in PERSON_FIELDS:  # a column name, never from input
            raise ValueError(f"{field} does not name a person")
        return self._select(
            f"SELECT record FROM conversations WHERE {field} = ? ORDER BY created_at", (value,)
        )

    def erase(self, conversation_id: str, *, now: float) -> dict[str, int]:
        def erase(record: Record, conn: sqlite3.Connection) -> dict[str, int]:
            named = (conversation_id,)
            counts = {
                "messages": conn.execute("DELETE FROM messages WHERE conversation_id = ?", named).rowcount,
                "queued": conn.execute(
                    "DELETE FROM queue_messages WHERE json_valid(body)"
                    " AND json_extract(body, '$.conversation_id') = ?",
                    named,
                ).rowcount,
                "outbox": conn.execute(
                    "DELETE FROM outbox WHERE json_extract(entry, '$.conversation_id') = ?", named
                ).rowcount,
            }
            conn.execute("DELETE FROM deliveries WHERE conversation_id = ?", named)
            erased = decisions.tombstone(record, now)
            record.clear()
            record.update(erased)
            return counts

        counts = self._update(conversation_id, erase, write_if=lambda _: True)  # one transaction: all or none
        self._db.checkpoint()  # no page as it was stays in the WAL or the database file
        return counts or {"messages": 0, "queued": 0, "outbox": 0}

    def list_locked(self) -> builtins.list[Record]:
        return self._select(
            "SELECT record FROM conversations INDEXED BY [gsi-locked]"
            f" WHERE conversation_status = '{PROCESSING_REPLY}' ORDER BY processing_started_at"
        )

    def record_refused_message(self, conversation_id: str, message: Record) -> bool:
        def refuse(record: Record, _: sqlite3.Connection) -> bool:
            changes = decisions.refuse(record, message)
            record.update(changes or {})
            return changes is not None

        return self._existing(conversation_id, self._update(conversation_id, refuse))

    def write_unlocked(self, conversation_id: str, *, changes: Record, message: Record | None = None) -> bool:
        def note(record: Record, conn: sqlite3.Connection) -> bool:
            if record.get("erased_at") or (
                message is not None and _present(conn, conversation_id, [message])
            ):
                return False  # erased: nothing of the person's is written back
            record.update(decisions.inbound_changes(record, changes))
            if message is not None:
                self._append(conn, conversation_id, [message], indexed=decisions.indexed(message))
            return True

        return self._existing(conversation_id, self._update(conversation_id, note))

    def lock_and_append(
        self,
        conversation_id: str,
        batch_id: str,
        messages: builtins.list[Record],
        *,
        now: float,
        lock_timeout_seconds: float,
    ) -> LockOutcome:
        return self._decided(
            conversation_id,
            lambda record, conn: decisions.lock(
                record,
                _present(conn, conversation_id, messages),
                batch_id,
                messages,
                now=now,
                lock_timeout_seconds=lock_timeout_seconds,
            ),
        )

    def add_pending(
        self, conversation_id: str, messages: builtins.list[Record], *, now: float
    ) -> LockOutcome:
        return self._decided(
            conversation_id,
            lambda record, conn: decisions.add_pending(
                record, _present(conn, conversation_id, messages), messages, now=now
            ),
            with_record=True,
        )

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
        def flush(record: Record, conn: sqlite3.Connection) -> decisions.Write:
            pending = record.get("pending_messages", [])
            return decisions.flush(
                record,
                _present(conn, conversation_id, readable(pending)),
                batch_id,
                pending_version=pending_version,
                now=now,
                lock_timeout_seconds=lock_timeout_seconds,
                held=held,
            )

        return self._decided(conversation_id, flush)

    def renew_lock(
        self, conversation_id: str, batch_id: str, *, now: float, changes: Record | None = None
    ) -> Record | None:
        def renew(record: Record, _: sqlite3.Connection) -> Record | None:
            if not holds(record, batch_id):
                return None
            record.update(decisions.renew(now, changes))
            return record

        return self._update(conversation_id, renew)

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
        def release(record: Record, conn: sqlite3.Connection) -> Record:
            if reply is not None:
                self._append(conn, conversation_id, [reply], indexed=True)
            return decisions.release(status, now, changes)

        return self._fenced(conversation_id, batch_id, release)

    def assign(
        self, conversation_id: str, operator: str, *, take_over: bool, now: float
    ) -> tuple[bool, Record | None]:
        def claim(record: Record, _: sqlite3.Connection) -> tuple[bool, Record]:
            changes = decisions.claim(record, operator, take_over=take_over, now=now)
            record.update(changes or {})
            return changes is not None, record

        return self._update(conversation_id, claim, write_if=lambda result: result[0]) or (False, None)

    def record_delivery(self, provider_id: str, status: str, error_code: str | None, *, now: float) -> str:
        with _errors(), self._db.transaction() as conn:
            row = conn.execute(
                "SELECT m.seq, m.conversation_id, m.message FROM deliveries d JOIN messages m"
                " ON m.conversation_id = d.conversation_id AND m.message_id = d.message_id"
                " WHERE d.provider_id = ?",
                (provider_id,),
            ).fetchone()
            if row is None:
                return "unknown"
            message = json.loads(row["message"])
            fields = decisions.delivery(message, status, error_code, now)
            if fields is None:
                return "stale"
            message.update(fields)
            conn.execute(
                "UPDATE messages SET message = ? WHERE conversation_id = ? AND seq = ?",
                (json.dumps(message, ensure_ascii=False), row["conversation_id"], row["seq"]),
            )
            return "recorded"

    def prune_messages(self, before: float) -> int:
        with _errors():
            with self._db.transaction() as conn:
                gone = conn.execute(
                    "DELETE FROM messages WHERE json_extract(message, '$.timestamp') < ?",
                    (clock.iso(before),),
                ).rowcount
                conn.execute(
                    "DELETE FROM deliveries WHERE NOT EXISTS (SELECT 1 FROM messages m"
                    " WHERE m.conversation_id = deliveries.conversation_id AND m.message_id = deliveries.message_id)"
                )
            if gone:
                self._db.checkpoint()
        return gone

    def annotate_message(self, conversation_id: str, message_id: str, fields: Record) -> bool:
        with _errors(), self._db.transaction() as conn:
            updated = conn.execute(
                "UPDATE messages SET message = json_patch(message, ?) WHERE conversation_id = ? AND message_id = ?",
                (json.dumps(fields, ensure_ascii=False), conversation_id, message_id),
            )
            return updated.rowcount == 1

    def count_turn(self, scope: str, day: str) -> int:
        with _errors(), self._db.transaction() as conn:
            return conn.execute(
                "INSERT INTO ai_turns (scope, day, turns) VALUES (?, ?, 1)"
                " ON CONFLICT (scope, day) DO UPDATE SET turns = turns + 1 RETURNING turns",
                (scope, day),
            ).fetchone()[0]

    def turns(self, scope: str, day: str) -> int:
        with _errors():
            row = (
                self._db.connection()
                .execute("SELECT turns FROM ai_turns WHERE scope = ? AND day = ?", (scope, day))
                .fetchone()
            )
        return row[0] if row else 0

    def emergency_unlock(
        self, conversation_id: str, batch_id: str, *, reason: str, now: float, to_pending: bool = False
    ) -> Record | None:
        def unlock(record: Record, conn: sqlite3.Connection) -> Record:
            rows = conn.execute(
                "DELETE FROM messages WHERE conversation_id = ? AND batch_id = ? RETURNING seq, message",
                (conversation_id, batch_id),
            ).fetchall()
            batch = [json.loads(row["message"]) for row in sorted(rows, key=lambda row: row["seq"])]
            return decisions.emergency_unlock(record, batch, reason=reason, now=now, to_pending=to_pending)

        return self._fenced(conversation_id, batch_id, unlock)

    def reset_stalled(self, conversation_id: str, batch_id: str, *, now: float) -> Record | None:
        return self._fenced(conversation_id, batch_id, lambda *_: decisions.reset_stalled(now))

    def _fenced(self, conversation_id: str, batch_id: str | None, unlock: Change) -> Record | None:
        """An unlock only `batch_id`, the lock's holder, may make: `unlock` writes the message rows and
        returns the record's changes. The record after, or None when `batch_id` does not hold the lock."""

        def fenced(record: Record, conn: sqlite3.Connection) -> Record | None:
            if not holds(record, batch_id):
                return None
            changes = unlock(record, conn)
            for name in decisions.LOCK_FIELDS:
                record.pop(name, None)
            record.update(changes)
            return record

        return self._update(conversation_id, fenced)

    def _decided(self, conversation_id: str, decide: Change, with_record: bool = False) -> LockOutcome:
        """Read, `decide` (a `decisions.Write`), write what it decided: the outcome, `missing` when
        there is no such conversation."""

        def write(record: Record, conn: sqlite3.Connection) -> tuple[LockOutcome, bool]:
            decision = decide(record, conn)
            record.update(decision.changes)
            self._append(conn, conversation_id, decision.append if decision.status == "acquired" else [])
            written = decision.status in ("acquired", "added")
            return decision.outcome(record if written or with_record else None), decision.writes

        result = self._update(conversation_id, write, write_if=lambda result: result[1])
        return result[0] if result else LockOutcome("missing")

    @staticmethod
    def _append(
        conn: sqlite3.Connection, conversation_id: str, messages: builtins.list[Record], indexed: bool = False
    ) -> None:
        insert_messages(conn, conversation_id, messages)
        if indexed:  # where a status callback finds the reply that its provider id is (a part of)
            conn.executemany(
                "INSERT OR REPLACE INTO deliveries (provider_id, conversation_id, message_id) VALUES (?, ?, ?)",
                [(pid, conversation_id, m["message_id"]) for m in messages for pid in provider_ids(m)],
            )

    @staticmethod
    def _existing(conversation_id: str, result: bool | None) -> bool:
        if result is None:
            raise StoreError(f"conversation {conversation_id} does not exist")
        return result

    def _select(self, sql: str, args: tuple = ()) -> builtins.list[Record]:
        with _errors():
            rows = self._db.connection().execute(sql, args).fetchall()
        return [json.loads(row["record"]) for row in rows]

    def _update(self, conversation_id: str, change: Change, write_if: Callable[[Any], bool] = bool) -> Any:
        """Read the record, let `change` modify it (and the message rows, on the connection it is
        given), write it back if `write_if(result)`; all in one transaction. Returns `change`'s
        result, or None when there is no such record."""
        with _errors(), self._db.transaction() as conn:
            row = conn.execute(
                "SELECT record FROM conversations WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
            if row is None:
                return None
            record = json.loads(row["record"])
            result = change(record, conn)
            if write_if(result):
                conn.execute(
                    "UPDATE conversations SET record = ? WHERE conversation_id = ?",
                    (json.dumps(record, ensure_ascii=False), conversation_id),
                )
            return result
