"""ConversationStore on SQLite: each record is one JSON document, its GSI keys generated columns."""

from __future__ import annotations

import json

from ...channels import Gsi
from ...ports import Record, StoreError, TransientStoreError
from .database import Database, translated_errors


def _errors():
    return translated_errors(StoreError, TransientStoreError)


class SqliteConversationStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    def find_active(self, gsi: Gsi, company: str, recipient: str) -> list[Record]:
        # Column names come from the channel table, never from input.
        sql = (
            f"SELECT record FROM conversations INDEXED BY [{gsi.name}]"
            f" WHERE {gsi.company_attr} = ? AND {gsi.recipient_attr} = ? AND task_complete = 0"
        )
        with _errors():
            rows = self._db.connection().execute(sql, (company, recipient)).fetchall()
        return [json.loads(row["record"]) for row in rows]

    def get(self, conversation_id: str) -> Record | None:
        with _errors():
            row = (
                self._db.connection()
                .execute("SELECT record FROM conversations WHERE conversation_id = ?", (conversation_id,))
                .fetchone()
            )
        return json.loads(row["record"]) if row else None

    def put(self, record: Record) -> None:
        with _errors(), self._db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO conversations (conversation_id, record) VALUES (?, ?)",
                (record["conversation_id"], json.dumps(record, ensure_ascii=False)),
            )

    def list(self, status: str | None = None) -> list[Record]:
        sql, args = "SELECT record FROM conversations", ()
        if status is not None:
            sql, args = sql + " WHERE conversation_status = ?", (status,)
        with _errors():
            rows = self._db.connection().execute(sql + " ORDER BY conversation_id", args).fetchall()
        return [json.loads(row["record"]) for row in rows]

    def record_refused_message(self, conversation_id: str, message: Record) -> bool:
        with _errors(), self._db.transaction() as conn:
            row = conn.execute(
                "SELECT record FROM conversations WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
            if row is None:
                raise StoreError(f"conversation {conversation_id} does not exist")
            record = json.loads(row["record"])
            refused = record.setdefault("refused_messages", [])
            if any(m.get("message_id") == message["message_id"] for m in refused):
                return False
            refused.append(message)
            conn.execute(
                "UPDATE conversations SET record = ? WHERE conversation_id = ?",
                (json.dumps(record, ensure_ascii=False), conversation_id),
            )
            return True
