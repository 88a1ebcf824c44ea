"""MessageQueue on SQLite: durable named queues with SQS semantics, in the engine's database file."""

from __future__ import annotations

import json
import uuid

from ... import clock
from ...channels import QUEUES
from ...ports import Attributes, QueuedMessage, QueueError, TransientQueueError
from .database import Database, translated_errors

MAX_MESSAGE_BYTES = 262_144  # SQS's classic limit, which moto and older accounts still enforce
QUEUE_NAMES = frozenset(QUEUES) | {f"{name}-dlq" for name in QUEUES}


def _errors():
    return translated_errors(QueueError, TransientQueueError)


def _message(row) -> QueuedMessage:
    return QueuedMessage(
        message_id=row["message_id"],
        queue=row["queue"],
        body=row["body"],
        attributes=json.loads(row["attributes"]),
        sent_at=row["sent_at"],
        visible_at=row["visible_at"],
        receive_count=row["receive_count"],
        receipt_handle=row["receipt_handle"],
    )


class SqliteMessageQueue:
    def __init__(self, database: Database) -> None:
        self._db = database

    def has_queue(self, queue: str) -> bool:
        return queue in QUEUE_NAMES

    def _check(self, queue: str) -> None:
        if queue not in QUEUE_NAMES:
            raise QueueError(f"no queue named {queue!r}; queues: {', '.join(sorted(QUEUE_NAMES))}")

    def send(
        self, queue: str, body: str, *, delay_seconds: int = 0, attributes: Attributes | None = None
    ) -> str:
        self._check(queue)
        if len(body.encode()) > MAX_MESSAGE_BYTES:
            raise QueueError(f"message body of {len(body.encode())} bytes exceeds {MAX_MESSAGE_BYTES}")
        message_id = str(uuid.uuid4())
        sent_at = clock.now()
        with _errors(), self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO queue_messages (message_id, queue, body, attributes, sent_at, visible_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    message_id,
                    queue,
                    body,
                    json.dumps(dict(attributes or {})),
                    sent_at,
                    sent_at + delay_seconds,
                ),
            )
        return message_id

    def peek(self, queue: str) -> list[QueuedMessage]:
        self._check(queue)
        with _errors():
            rows = (
                self._db.connection()
                .execute("SELECT * FROM queue_messages WHERE queue = ? ORDER BY seq", (queue,))
                .fetchall()
            )
        return [_message(row) for row in rows]

    def stats(self) -> dict[str, dict[str, int]]:
        """Per queue, like SQS's approximate counts: available, delayed, in flight."""
        now = clock.now()
        with _errors():
            rows = (
                self._db.connection()
                .execute(
                    "SELECT queue,"
                    " SUM(visible_at <= ?) AS available,"
                    " SUM(visible_at > ? AND receive_count = 0) AS delayed,"
                    " SUM(visible_at > ? AND receive_count > 0) AS in_flight"
                    " FROM queue_messages GROUP BY queue",
                    (now, now, now),
                )
                .fetchall()
            )
        counts = {name: {"available": 0, "delayed": 0, "in_flight": 0} for name in sorted(QUEUE_NAMES)}
        for row in rows:
            counts[row["queue"]] = {k: row[k] for k in ("available", "delayed", "in_flight")}
        return counts
