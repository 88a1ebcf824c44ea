"""MessageQueue on SQLite: durable named queues with SQS semantics, in the engine's database file.

Delay, visibility timeout, receive count, and a redrive to `NAME-dlq` once a message has been received
`max_receive_count` times without being deleted, as an SQS redrive policy does. A receive runs in one
write transaction, so two workers, threads or processes, never get the same message while it is
invisible.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence

from ... import clock
from ...channels import QUEUES
from ...ports import Attributes, OutgoingMessage, QueuedMessage, QueueError, TransientQueueError
from .database import Database, translated_errors

MAX_MESSAGE_BYTES = 262_144  # SQS's classic limit, which moto and older accounts still enforce
QUEUE_NAMES = frozenset(QUEUES) | {f"{name}-dlq" for name in QUEUES}
_POLL_SECONDS = 0.05  # long-poll interval; another process's send is seen within this


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
    def __init__(self, database: Database, max_receive_count: int = 5) -> None:
        self._db = database
        self.max_receive_count = max_receive_count

    def has_queue(self, queue: str) -> bool:
        return queue in QUEUE_NAMES

    def _check(self, queue: str) -> None:
        if queue not in QUEUE_NAMES:
            raise QueueError(f"no queue named {queue!r}; queues: {', '.join(sorted(QUEUE_NAMES))}")

    def send(
        self, queue: str, body: str, *, delay_seconds: int = 0, attributes: Attributes | None = None
    ) -> str:
        return self.send_batch(queue, [OutgoingMessage(body, delay_seconds, dict(attributes or {}))])[0]

    def send_batch(self, queue: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Enqueue all of `messages` in one transaction: all or none; returns their ids."""
        self._check(queue)
        for message in messages:
            if len(message.body.encode()) > MAX_MESSAGE_BYTES:
                raise QueueError(
                    f"message body of {len(message.body.encode())} bytes exceeds {MAX_MESSAGE_BYTES}"
                )
        ids = [str(uuid.uuid4()) for _ in messages]
        sent_at = clock.now()
        with _errors(), self._db.transaction() as conn:
            conn.executemany(
                "INSERT INTO queue_messages (message_id, queue, body, attributes, sent_at, visible_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (mid, queue, m.body, json.dumps(dict(m.attributes)), sent_at, sent_at + m.delay_seconds)
                    for mid, m in zip(ids, messages, strict=True)
                ],
            )
        return ids

    def receive(
        self, queue: str, *, max_messages: int = 10, wait_seconds: float = 0, visibility_timeout: float = 30
    ) -> list[QueuedMessage]:
        """Up to `max_messages` visible messages, invisible to others for `visibility_timeout`.

        Waits up to `wait_seconds` for one to become visible (long poll). A message already received
        `max_receive_count` times moves to the queue's DLQ instead of being handed out again.
        """
        self._check(queue)
        deadline = time.monotonic() + wait_seconds
        while True:
            messages = self._receive_now(queue, max_messages, visibility_timeout)
            if messages or time.monotonic() >= deadline:
                return messages
            time.sleep(min(_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def _receive_now(self, queue: str, max_messages: int, visibility_timeout: float) -> list[QueuedMessage]:
        now = clock.now()
        redrives = not queue.endswith("-dlq")
        with _errors():
            # A read first, so that an empty poll takes no write lock.
            if (
                not self._db.connection()
                .execute(
                    "SELECT 1 FROM queue_messages WHERE queue = ? AND visible_at <= ? LIMIT 1", (queue, now)
                )
                .fetchone()
            ):
                return []
            received = []
            with self._db.transaction() as conn:
                rows = conn.execute(
                    "SELECT * FROM queue_messages WHERE queue = ? AND visible_at <= ?"
                    " ORDER BY visible_at, seq LIMIT ?",
                    (queue, now, max_messages),
                ).fetchall()
                for row in rows:
                    if redrives and row["receive_count"] >= self.max_receive_count:
                        conn.execute(
                            "UPDATE queue_messages SET queue = ?, visible_at = ?, receipt_handle = NULL WHERE seq = ?",
                            (f"{queue}-dlq", now, row["seq"]),
                        )
                        continue
                    message = _message(
                        {
                            **dict(row),
                            "visible_at": now + visibility_timeout,
                            "receive_count": row["receive_count"] + 1,
                            "receipt_handle": uuid.uuid4().hex,
                        }
                    )
                    conn.execute(
                        "UPDATE queue_messages SET visible_at = ?, receive_count = ?, receipt_handle = ? WHERE seq = ?",
                        (message.visible_at, message.receive_count, message.receipt_handle, row["seq"]),
                    )
                    received.append(message)
            return received

    def delete(self, queue: str, receipt_handle: str) -> bool:
        """Delete a received message; False when the handle is stale (it was received again since)."""
        with _errors(), self._db.transaction() as conn:
            deleted = conn.execute(
                "DELETE FROM queue_messages WHERE queue = ? AND receipt_handle = ?", (queue, receipt_handle)
            )
            return deleted.rowcount == 1

    def change_visibility(self, queue: str, receipt_handle: str, timeout: float) -> bool:
        """Make a received message visible again in `timeout` seconds (0: now)."""
        with _errors(), self._db.transaction() as conn:
            changed = conn.execute(
                "UPDATE queue_messages SET visible_at = ? WHERE queue = ? AND receipt_handle = ?",
                (clock.now() + timeout, queue, receipt_handle),
            )
            return changed.rowcount == 1

    def redrive(self, queue: str) -> int:
        """Move every message of `queue`-dlq back to `queue`, visible now, receive count reset."""
        self._check(queue)
        with _errors(), self._db.transaction() as conn:
            moved = conn.execute(
                "UPDATE queue_messages SET queue = ?, visible_at = ?, receive_count = 0, receipt_handle = NULL"
                " WHERE queue = ?",
                (queue, clock.now(), f"{queue}-dlq"),
            )
            return moved.rowcount

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
