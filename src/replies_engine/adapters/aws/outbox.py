"""Outbox on SQS (`OUTBOX_QUEUE_URL`): replies that have no provider adapter here (email) wait there
for the system that delivers them."""

from __future__ import annotations

import json
import uuid

from ... import clock
from ...ports import QueueError, Record
from .queue import SqsMessageQueue


class SqsOutbox:
    def __init__(self, queue: SqsMessageQueue) -> None:
        self.queue = queue

    def add(self, entry: Record) -> str:
        message_id = f"outbox-{uuid.uuid4().hex}"
        body = json.dumps({"message_id": message_id, "created_at": clock.iso(), **entry}, ensure_ascii=False)
        self.queue.send("outbox", body, attributes={"conversation_id": entry.get("conversation_id") or ""})
        return message_id

    def find(self, batch_id: str, part: int = 0) -> None:
        return None  # a queue cannot be searched

    def prune(self, before: float) -> int:
        return 0  # the queue's retention period (14 days) drops what nobody took

    def list(self) -> list[Record]:
        raise QueueError("the AWS outbox is an SQS queue: read it with its consumer, or `queues stats`")
