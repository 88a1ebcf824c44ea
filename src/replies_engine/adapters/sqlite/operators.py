"""OperatorStore on SQLite: accounts by name (their token's hash unique), page sessions, failed logins."""

from __future__ import annotations

import json
import sqlite3

from ... import clock
from ...ports import Record, StoreError, TransientStoreError
from .database import Database, translated_errors


def _errors():
    return translated_errors(StoreError, TransientStoreError)


class SqliteOperators:
    def __init__(self, database: Database) -> None:
        self._db = database

    def add_operator(self, account: Record) -> bool:
        with _errors(), self._db.transaction() as conn:
            try:
                conn.execute(
                    "INSERT INTO operators (name, token_hash, account) VALUES (?, ?, ?)",
                    (account["name"], account["token_hash"], json.dumps(account)),
                )
            except sqlite3.IntegrityError:
                return False
        return True

    def replace_token(self, name: str, token_hash: str) -> Record | None:
        with _errors(), self._db.transaction() as conn:
            row = conn.execute("SELECT account FROM operators WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            account = {**json.loads(row["account"]), "token_hash": token_hash}
            conn.execute(
                "UPDATE operators SET token_hash = ?, account = ? WHERE name = ?",
                (token_hash, json.dumps(account), name),
            )
            return account

    def remove_operator(self, name: str) -> bool:
        with _errors(), self._db.transaction() as conn:
            return conn.execute("DELETE FROM operators WHERE name = ?", (name,)).rowcount == 1

    def operator(self, name: str) -> Record | None:
        return self._one("SELECT account FROM operators WHERE name = ?", name)

    def operators(self) -> list[Record]:
        with _errors():
            rows = self._db.connection().execute("SELECT account FROM operators ORDER BY name").fetchall()
        return [json.loads(row["account"]) for row in rows]

    def operator_by_token(self, token_hash: str) -> Record | None:
        return self._one("SELECT account FROM operators WHERE token_hash = ?", token_hash)

    def add_session(self, session_hash: str, session: Record) -> None:
        with _errors(), self._db.transaction() as conn:
            conn.execute("DELETE FROM operator_sessions WHERE expires_at < ?", (clock.now(),))
            conn.execute(
                "INSERT INTO operator_sessions (session_hash, session, expires_at) VALUES (?, ?, ?)",
                (session_hash, json.dumps(session), session["expires_at"]),
            )

    def session(self, session_hash: str) -> Record | None:
        return self._one(
            "SELECT session AS account FROM operator_sessions WHERE session_hash = ?", session_hash
        )

    def remove_session(self, session_hash: str) -> None:
        with _errors(), self._db.transaction() as conn:
            conn.execute("DELETE FROM operator_sessions WHERE session_hash = ?", (session_hash,))

    def count_failure(self, key: str, window: int) -> int:
        with _errors(), self._db.transaction() as conn:
            conn.execute("DELETE FROM login_failures WHERE window < ?", (window - 1,))
            return conn.execute(
                "INSERT INTO login_failures (key, window, failures) VALUES (?, ?, 1)"
                " ON CONFLICT (key, window) DO UPDATE SET failures = failures + 1 RETURNING failures",
                (key, window),
            ).fetchone()[0]

    def failures(self, key: str, window: int) -> int:
        with _errors():
            row = (
                self._db.connection()
                .execute("SELECT failures FROM login_failures WHERE key = ? AND window = ?", (key, window))
                .fetchone()
            )
        return row[0] if row else 0

    def _one(self, sql: str, value: str) -> Record | None:
        with _errors():
            row = self._db.connection().execute(sql, (value,)).fetchone()
        return json.loads(row["account"]) if row else None
