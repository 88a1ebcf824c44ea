"""MessageQueue on SQS. Queue URLs come from the environment (`WHATSAPP_QUEUE_URL`, `WHATSAPP_DLQ_URL`…).

Dead-lettering after too many receives is the queue's redrive policy (template.yaml); retry
exhaustion on lock contention is an explicit send to the DLQ. SQS cannot show a message without
receiving it, so `peek` is for the embedded engine only; `stats` works on both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ...config import SQS_MAX_DELAY_SECONDS
from ...ports import Attributes, OutgoingMessage, QueuedMessage, QueueError, TransientQueueError
from .clients import TRANSIENT_ERROR_CODES, client, translated_errors

_SEND_BATCH = 10  # SQS's limit per SendMessageBatch
_MAX_WAIT = 20  # SQS's limit on WaitTimeSeconds


def _errors():
    return translated_errors(QueueError, TransientQueueError)


def _attributes(attributes: Attributes) -> dict[str, Any]:
    return {
        name: {"DataType": "Number", "StringValue": str(value)}
        if isinstance(value, int)
        else {"DataType": "String", "StringValue": str(value)}
        for name, value in attributes.items()
    }


def _from_attributes(attributes: Mapping[str, Any]) -> dict[str, str | int]:
    return {
        name: int(a["StringValue"]) if a["DataType"].startswith("Number") else a["StringValue"]
        for name, a in attributes.items()
    }


class SqsMessageQueue:
    def __init__(self, queue_urls: Mapping[str, str]) -> None:
        self.queue_urls = dict(queue_urls)

    def has_queue(self, queue: str) -> bool:
        return queue in self.queue_urls

    def _url(self, queue: str) -> str:
        try:
            return self.queue_urls[queue]
        except KeyError:
            variable = (
                f"{queue.removesuffix('-dlq').upper()}_{'DLQ' if queue.endswith('-dlq') else 'QUEUE'}_URL"
            )
            raise QueueError(f"no URL for queue {queue!r}: set {variable}") from None

    def send(
        self, queue: str, body: str, *, delay_seconds: int = 0, attributes: Attributes | None = None
    ) -> str:
        with _errors():
            response = client("sqs").send_message(
                QueueUrl=self._url(queue),
                MessageBody=body,
                DelaySeconds=min(int(delay_seconds), SQS_MAX_DELAY_SECONDS),
                MessageAttributes=_attributes(attributes or {}),
            )
        return response["MessageId"]

    def send_batch(self, queue: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """SendMessageBatch in tens; raises if any entry failed (the caller retries the whole batch)."""
        url = self._url(queue)
        ids: list[str] = []
        for start in range(0, len(messages), _SEND_BATCH):
            chunk = messages[start : start + _SEND_BATCH]
            with _errors():
                response = client("sqs").send_message_batch(
                    QueueUrl=url,
                    Entries=[
                        {
                            "Id": str(n),
                            "MessageBody": m.body,
                            "DelaySeconds": min(int(m.delay_seconds), SQS_MAX_DELAY_SECONDS),
                            "MessageAttributes": _attributes(m.attributes),
                        }
                        for n, m in enumerate(chunk)
                    ],
                )
            if failed := response.get("Failed"):
                codes = {f.get("Code") for f in failed}
                server_fault = any(not f.get("SenderFault") for f in failed)
                error = TransientQueueError if server_fault or codes & TRANSIENT_ERROR_CODES else QueueError
                raise error(f"{len(failed)} of {len(chunk)} messages not sent to {queue}: {sorted(codes)}")
            ids.extend(
                entry["MessageId"] for entry in sorted(response["Successful"], key=lambda e: int(e["Id"]))
            )
        return ids

    def receive(
        self, queue: str, *, max_messages: int = 10, wait_seconds: float = 0, visibility_timeout: float = 30
    ) -> list[QueuedMessage]:
        with _errors():
            response = client("sqs").receive_message(
                QueueUrl=self._url(queue),
                MaxNumberOfMessages=max(1, min(max_messages, 10)),
                WaitTimeSeconds=min(_MAX_WAIT, math.ceil(wait_seconds)),
                VisibilityTimeout=math.ceil(visibility_timeout),
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            )
        return [
            QueuedMessage(
                message_id=m["MessageId"],
                queue=queue,
                body=m["Body"],
                attributes=_from_attributes(m.get("MessageAttributes") or {}),
                sent_at=int(m["Attributes"]["SentTimestamp"]) / 1000,
                visible_at=0.0,  # SQS does not say; the visibility timeout starts now
                receive_count=int(m["Attributes"]["ApproximateReceiveCount"]),
                receipt_handle=m["ReceiptHandle"],
            )
            for m in response.get("Messages", [])
        ]

    def delete(self, queue: str, receipt_handle: str) -> bool:
        with _errors():
            client("sqs").delete_message(QueueUrl=self._url(queue), ReceiptHandle=receipt_handle)
        return True

    def change_visibility(self, queue: str, receipt_handle: str, timeout: float) -> bool:
        with _errors():
            client("sqs").change_message_visibility(
                QueueUrl=self._url(queue), ReceiptHandle=receipt_handle, VisibilityTimeout=math.ceil(timeout)
            )
        return True

    def redrive(self, queue: str) -> int:
        """Move what is in `queue`-dlq now back to `queue`: receive, send, delete, ten at a time."""
        moved = 0
        while batch := self.receive(f"{queue}-dlq", max_messages=10, visibility_timeout=60):
            self.send_batch(queue, [OutgoingMessage(m.body, 0, m.attributes) for m in batch])
            for message in batch:
                assert message.receipt_handle is not None  # a received message has one
                self.delete(f"{queue}-dlq", message.receipt_handle)
            moved += len(batch)
        return moved

    def peek(self, queue: str) -> list[QueuedMessage]:
        raise QueueError(
            "SQS cannot show messages without receiving them: use `queues stats`, or the SQS console's poll"
        )

    def stats(self) -> dict[str, dict[str, int]]:
        names = {
            "available": "ApproximateNumberOfMessages",
            "delayed": "ApproximateNumberOfMessagesDelayed",
            "in_flight": "ApproximateNumberOfMessagesNotVisible",
        }
        counts = {}
        for queue, url in sorted(self.queue_urls.items()):
            with _errors():
                attributes = client("sqs").get_queue_attributes(
                    QueueUrl=url, AttributeNames=list(names.values())
                )
            counts[queue] = {
                ours: int(attributes["Attributes"].get(theirs, 0)) for ours, theirs in names.items()
            }
        return counts
