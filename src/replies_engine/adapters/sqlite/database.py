"""The embedded database: one SQLite file in WAL mode, created on first use, a connection per thread.

Transactions are `BEGIN IMMEDIATE`: the write lock is taken up front, so a read-check-write inside one
is the conditional write that DynamoDB's `ConditionExpression` gives the AWS backend.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ...channels import GSIS
from ...config import ConfigurationError
from ...ports import BackendError, TransientBackendError

SCHEMA_VERSION = (
    8  # 3: messages in their own table; 4: deliveries; 5: ai_turns; 6: recipient_bsuid; 7: operators;
    # 8: messages by time (retention)
)

# Generated columns mirror the DynamoDB attributes the GSIs and the sparse lock index are built on.
_INDEXED_ATTRS = sorted(
    {attr for gsi in GSIS for attr in (gsi.company_attr, gsi.recipient_attr)}
    | {"task_complete", "created_at", "conversation_status", "processing_started_at"}
)
_SCHEMA = "\n".join(
    [
        "CREATE TABLE IF NOT EXISTS conversations (",
        "  conversation_id TEXT PRIMARY KEY,",
        "  record TEXT NOT NULL CHECK (json_valid(record)),",
        ",\n".join(
            f"  {a} GENERATED ALWAYS AS (json_extract(record, '$.{a}')) VIRTUAL" for a in _INDEXED_ATTRS
        ),
        ");",
        *(
            f"CREATE INDEX IF NOT EXISTS [{g.name}] ON conversations ({g.company_attr}, {g.recipient_attr});"
            for g in GSIS
        ),
        # Sparse, like the DynamoDB lock index: only locked conversations are in it.
        "CREATE INDEX IF NOT EXISTS [gsi-locked] ON conversations (processing_started_at)"
        " WHERE conversation_status = 'processing_reply';",
        """
        CREATE TABLE IF NOT EXISTS messages (
          conversation_id TEXT NOT NULL,
          seq INTEGER NOT NULL,
          message_id TEXT,
          batch_id TEXT,
          message TEXT NOT NULL CHECK (json_valid(message)),
          PRIMARY KEY (conversation_id, seq)
        );
        CREATE UNIQUE INDEX IF NOT EXISTS messages_by_id ON messages (conversation_id, message_id);
        CREATE INDEX IF NOT EXISTS messages_by_batch ON messages (conversation_id, batch_id);
        CREATE INDEX IF NOT EXISTS messages_by_time ON messages (json_extract(message, '$.timestamp'));
        CREATE TABLE IF NOT EXISTS deliveries (
          provider_id TEXT PRIMARY KEY,
          conversation_id TEXT NOT NULL,
          message_id TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS ai_turns (
          scope TEXT NOT NULL,
          day TEXT NOT NULL,
          turns INTEGER NOT NULL,
          PRIMARY KEY (scope, day)
        );
        CREATE TABLE IF NOT EXISTS queue_messages (
          seq INTEGER PRIMARY KEY AUTOINCREMENT,
          message_id TEXT NOT NULL UNIQUE,
          queue TEXT NOT NULL,
          body TEXT NOT NULL,
          attributes TEXT NOT NULL,
          sent_at REAL NOT NULL,
          visible_at REAL NOT NULL,
          receive_count INTEGER NOT NULL DEFAULT 0,
          receipt_handle TEXT
        );
        CREATE INDEX IF NOT EXISTS queue_visible ON queue_messages (queue, visible_at);
        CREATE TABLE IF NOT EXISTS engine_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS outbox (
          seq INTEGER PRIMARY KEY AUTOINCREMENT,
          message_id TEXT NOT NULL UNIQUE,
          entry TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS operators (
          name TEXT PRIMARY KEY,
          token_hash TEXT NOT NULL UNIQUE,
          account TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS operator_sessions (
          session_hash TEXT PRIMARY KEY,
          session TEXT NOT NULL,
          expires_at REAL NOT NULL
        );
        CREATE TABLE IF NOT EXISTS login_failures (
          key TEXT NOT NULL,
          window INTEGER NOT NULL,
          failures INTEGER NOT NULL,
          PRIMARY KEY (key, window)
        );
        """,
        f"PRAGMA user_version = {SCHEMA_VERSION};",
    ]
)

_TRANSIENT_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL}


@contextmanager
def translated_errors(error: type[BackendError], transient: type[TransientBackendError]) -> Iterator[None]:
    """Turn sqlite3 errors into the ports' vocabulary: busy/locked/full → transient, else permanent."""
    try:
        yield
    except sqlite3.Error as exc:
        code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
        if code == sqlite3.SQLITE_CANTOPEN:
            raise ConfigurationError(f"cannot open the SQLite database: {exc}") from exc
        raise (transient if code in _TRANSIENT_CODES else error)(f"sqlite: {exc}") from exc


def move_messages_out_of_records(conn: sqlite3.Connection) -> dict[str, int]:
    """Upgrade from schema 2, where each record held its `messages`: one row per message instead, in
    order, the first of any repeated message id kept. Part of the schema's transaction: all or none.
    Returns how many conversations and messages it moved."""
    rows = conn.execute(
        "SELECT conversation_id, json_extract(record, '$.messages') AS messages FROM conversations"
        " WHERE json_type(record, '$.messages') IS NOT NULL"
    ).fetchall()
    moved = 0
    for row in rows:
        messages = [m for m in json.loads(row["messages"] or "[]") if isinstance(m, dict)]
        insert_messages(conn, row["conversation_id"], messages)
        moved += len(messages)
        conn.execute(
            "UPDATE conversations SET record = json_remove(record, '$.messages') WHERE conversation_id = ?",
            (row["conversation_id"],),
        )
    return {"conversations": len(rows), "messages": moved}


def add_indexed_columns(conn: sqlite3.Connection) -> None:
    """Upgrade a table from before an index's attribute had its generated column (schema 6:
    `recipient_bsuid`); a virtual column is computed, so adding one rewrites nothing."""
    existing = {row[1] for row in conn.execute("PRAGMA table_xinfo(conversations)")}
    if not existing:
        return  # a new database: CREATE TABLE makes them all
    for attr in _INDEXED_ATTRS:
        if attr not in existing:
            conn.execute(
                f"ALTER TABLE conversations ADD COLUMN {attr}"
                f" GENERATED ALWAYS AS (json_extract(record, '$.{attr}')) VIRTUAL"
            )


def insert_messages(conn: sqlite3.Connection, conversation_id: str, messages: list[dict]) -> None:
    """Append `messages` after the conversation's newest; a message id already there is skipped."""
    last = conn.execute(
        "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = ?", (conversation_id,)
    ).fetchone()[0]
    conn.executemany(
        "INSERT OR IGNORE INTO messages (conversation_id, seq, message_id, batch_id, message)"
        " VALUES (?, ?, ?, ?, ?)",
        [
            (conversation_id, seq, m.get("message_id"), m.get("batch_id"), json.dumps(m, ensure_ascii=False))
            for seq, m in enumerate(messages, last + 1)
        ],
    )


class Database:
    """Connections to one SQLite file; the schema is created by the first connection of a process."""

    def __init__(self, path: str, busy_timeout_ms: int = 2000) -> None:
        if sqlite3.sqlite_version_info < (3, 35):  # DELETE … RETURNING
            raise ConfigurationError(f"SQLite {sqlite3.sqlite_version} is too old: 3.35 or newer is needed")
        self.path = path
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"cannot open the database {path}: {exc}") from None
        self._timeout = busy_timeout_ms / 1000
        self._local = threading.local()
        self._schema_lock = threading.Lock()
        self._schema_ready = False

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")  # an acknowledged message survives a power cut
                conn.execute(
                    "PRAGMA secure_delete = ON"
                )  # what is deleted is overwritten, not left in free pages
                self._ensure_schema(conn)
            except BaseException:
                conn.close()
                raise
            self._local.conn = conn
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        with self._schema_lock:
            if self._schema_ready:
                return
            if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    add_indexed_columns(conn)
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    move_messages_out_of_records(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            self._schema_ready = True

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database's write lock from its first statement."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # also when COMMIT itself failed (busy): never leave it open
                conn.execute("ROLLBACK")
            raise

    def local_secret(self, name: str) -> str:
        """The engine's own credential `name` (`twilio_auth_token`, `email_webhook_token`), made on first
        use and kept here: `replies-engine send` signs with what `serve` verifies."""
        with translated_errors(BackendError, TransientBackendError), self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO engine_settings (name, value) VALUES (?, ?)",
                (name, secrets.token_hex(16)),
            )
            return conn.execute("SELECT value FROM engine_settings WHERE name = ?", (name,)).fetchone()[0]

    def checkpoint(self) -> None:
        """Copy the WAL into the database and empty it: after a deletion, no old page stays in the WAL.
        A reader in the middle of a transaction holds it back: tried again for a moment, then left to
        SQLite's own checkpoints (the pages were overwritten in the WAL already: secure_delete)."""
        with translated_errors(BackendError, TransientBackendError):
            for _ in range(20):
                busy = self.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if not busy:
                    return
                time.sleep(0.05)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
