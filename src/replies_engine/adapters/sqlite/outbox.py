"""Outbox on SQLite: the replies the embedded engine would have sent, for `replies-engine outbox list`."""

from __future__ import annotations

import json
import uuid

from ... import clock
from ...ports import Record, StoreError, TransientStoreError
from .database import Database, translated_errors


class SqliteOutbox:
    def __init__(self, database: Database) -> None:
        self._db = database

    def add(self, entry: Record) -> str:
        message_id = f"outbox-{uuid.uuid4().hex}"
        stored = {"message_id": message_id, "created_at": clock.iso(), **entry}
        with translated_errors(StoreError, TransientStoreError), self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO outbox (message_id, entry) VALUES (?, ?)",
                (message_id, json.dumps(stored, ensure_ascii=False)),
            )
        return message_id

    def find(self, batch_id: str, part: int = 0) -> Record | bool:
        with translated_errors(StoreError, TransientStoreError):
            row = (
                self._db.connection()
                .execute(
                    "SELECT entry FROM outbox WHERE json_extract(entry, '$.batch_id') = ?"
                    " AND coalesce(json_extract(entry, '$.part'), 0) = ?",
                    (batch_id, part),
                )
                .fetchone()
            )
        return json.loads(row["entry"]) if row else False

    def prune(self, before: float) -> int:
        with translated_errors(StoreError, TransientStoreError):
            with self._db.transaction() as conn:
                gone = conn.execute(
                    "DELETE FROM outbox WHERE json_extract(entry, '$.created_at') < ?", (clock.iso(before),)
                ).rowcount
            if gone:
                self._db.checkpoint()  # the pages as they were stay in the database file until then
        return gone

    def list(self) -> list[Record]:
        with translated_errors(StoreError, TransientStoreError):
            rows = self._db.connection().execute("SELECT entry FROM outbox ORDER BY seq").fetchall()
        return [json.loads(row["entry"]) for row in rows]
