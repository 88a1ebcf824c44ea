"""The local engine's workers: what Lambda's SQS event source mapping and EventBridge do in AWS.

A worker long-polls one queue, hands up to 10 messages to its handler as an SQS event, deletes those
the handler did not report as failed, and leaves the failed ones to come back after their visibility
timeout. Stopping hands messages it received but did not process back to the queue at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import handlers
from ..bootstrap import Runtime
from ..channels import AI_QUEUE, BATCH_QUEUES
from ..ports import QueuedMessage, TransientBackendError

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def sqs_event(queue: str, messages: list[QueuedMessage]) -> dict[str, Any]:
    """The event Lambda's SQS trigger would deliver for `messages`."""
    return {"Records": [sqs_record(queue, m) for m in messages]}


def sqs_record(queue: str, message: QueuedMessage) -> dict[str, Any]:
    return {
        "messageId": message.message_id,
        "receiptHandle": message.receipt_handle,
        "body": message.body,
        "attributes": {
            "ApproximateReceiveCount": str(message.receive_count),
            "SentTimestamp": str(int(message.sent_at * 1000)),
        },
        "messageAttributes": {
            name: {"stringValue": str(value), "dataType": "Number" if isinstance(value, int) else "String"}
            for name, value in message.attributes.items()
        },
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:local:000000000000:{queue}",
    }


class QueueWorker:
    """Feeds one queue to one handler."""

    def __init__(self, runtime: Runtime, queue: str, handler: Handler, batch_window: float = 0) -> None:
        self.runtime = runtime
        self.queue = queue
        self.handler = handler
        self.batch_window = batch_window  # like Lambda's MaximumBatchingWindowInSeconds

    def _receive(self, wait_seconds: float) -> list[QueuedMessage]:
        def receive(max_messages: int, wait: float) -> list[QueuedMessage]:
            return self.runtime.queue.receive(
                self.queue,
                max_messages=max_messages,
                wait_seconds=wait,
                visibility_timeout=self.runtime.settings.visibility_timeout_seconds,
            )

        messages = receive(10, wait_seconds)
        deadline = time.monotonic() + self.batch_window
        while messages and len(messages) < 10 and (left := deadline - time.monotonic()) > 0:
            messages += receive(10 - len(messages), left)
        return messages

    def poll_once(self, wait_seconds: float = 0, stop: threading.Event | None = None) -> int:
        """Receive one batch and process it; returns how many messages were received."""
        messages = self._receive(wait_seconds)
        if not messages:
            return 0
        if stop is not None and stop.is_set():
            for message in messages:  # not processed: visible again at once
                self.runtime.queue.change_visibility(self.queue, message.receipt_handle, 0)
            return len(messages)
        try:
            result = self.handler(sqs_event(self.queue, messages), None)
            failed = {item["itemIdentifier"] for item in result.get("batchItemFailures", [])}
        except Exception:
            logger.exception("handler raised: the whole batch will be retried", extra={"queue": self.queue})
            failed = {m.message_id for m in messages}
        for message in messages:
            if message.message_id not in failed:
                self.runtime.queue.delete(self.queue, message.receipt_handle)
        return len(messages)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.poll_once(wait_seconds=1, stop=stop)
            except TransientBackendError as exc:
                logger.warning("queue busy, retrying", extra={"queue": self.queue, "error": str(exc)})
                stop.wait(0.5)
            except Exception:
                logger.exception("worker error", extra={"queue": self.queue})
                stop.wait(1)


class LocalEngine:
    """Workers for the batch queues and the AI queue, and the sweeper on a timer."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        window = runtime.settings.batch_window_seconds
        self.workers = [QueueWorker(runtime, q, handlers.batch_processor, window) for q in BATCH_QUEUES]
        self.workers.append(QueueWorker(runtime, AI_QUEUE, handlers.reply_sender))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=w.run, args=(self._stop,), name=f"worker-{w.queue}", daemon=True)
            for w in self.workers
        ]
        self._threads.append(threading.Thread(target=self._sweep, name="sweeper", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Let each worker finish the batch in its hands, then return."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def _sweep(self) -> None:
        while not self._stop.wait(self.runtime.settings.sweep_interval_seconds):
            try:
                handlers.stalled_sweeper({"source": "local.timer"}, None)
            except Exception:
                logger.exception("sweep failed")
