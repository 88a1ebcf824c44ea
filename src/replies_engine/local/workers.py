"""The local engine's workers: what Lambda's SQS event source mapping and EventBridge do in AWS.

A worker long-polls one queue and hands its messages to the handler as SQS events, several at once
(a pool, as Lambda runs concurrent invocations); it deletes those the handler did not report as
failed and leaves the failed ones to come back after their visibility timeout. Stopping lets the
batches in hand finish and hands messages received but not yet processed back to the queue at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import handlers
from ..channels import AI_QUEUE, BATCH_QUEUES, HANDOFF_QUEUE
from ..config import ConfigurationError
from ..ports import QueuedMessage, Runtime, TransientBackendError

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
    """Feeds one queue to one handler, like one SQS event source mapping: up to `concurrency`
    invocations at once, each with a batch of at most `batch_size` messages."""

    def __init__(
        self,
        runtime: Runtime,
        queue: str,
        handler: Handler,
        batch_window: float = 0,
        *,
        batch_size: int = 10,
        concurrency: int = 1,
    ) -> None:
        self.runtime = runtime
        self.queue = queue
        self.handler = handler
        self.batch_window = batch_window  # like Lambda's MaximumBatchingWindowInSeconds
        self.batch_size = batch_size
        self.concurrency = concurrency

    def _receive(self, wait_seconds: float) -> list[QueuedMessage]:
        def receive(max_messages: int, wait: float) -> list[QueuedMessage]:
            return self.runtime.queue.receive(
                self.queue,
                max_messages=max_messages,
                wait_seconds=wait,
                visibility_timeout=self.runtime.settings.visibility_timeout_seconds,
            )

        messages = receive(self.batch_size, wait_seconds)
        deadline = time.monotonic() + self.batch_window
        while messages and len(messages) < self.batch_size and (left := deadline - time.monotonic()) > 0:
            messages += receive(self.batch_size - len(messages), left)
        return messages

    def poll_once(self, wait_seconds: float = 0) -> int:
        """Receive one batch and process it here; returns how many messages were received."""
        messages = self._receive(wait_seconds)
        if messages:
            self._process(messages)
        return len(messages)

    def _process(self, messages: list[QueuedMessage]) -> None:
        """One invocation: delete what the handler did not report failed; the rest comes back later."""
        try:
            result = self.handler(sqs_event(self.queue, messages), None)
            failed = {item["itemIdentifier"] for item in result.get("batchItemFailures", [])}
        except Exception:
            logger.exception("handler raised: the whole batch will be retried", extra={"queue": self.queue})
            failed = {m.message_id for m in messages}
        for message in messages:
            if message.message_id not in failed:
                assert message.receipt_handle is not None  # a received message has one
                self.runtime.queue.delete(self.queue, message.receipt_handle)

    def _hand_back(self, messages: list[QueuedMessage]) -> None:
        """Received but not processed: visible again at once, for the next engine."""
        for message in messages:
            assert message.receipt_handle is not None  # a received message has one
            self.runtime.queue.change_visibility(self.queue, message.receipt_handle, 0)

    def run(self, stop: threading.Event) -> None:
        """Receive while a slot is free and process each batch in the pool, until `stop`; then let the
        batches in hand finish (the stages are safe to run in parallel: the lock is per conversation)."""
        slots = threading.BoundedSemaphore(self.concurrency)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"worker-{self.queue}") as pool:
            while not stop.is_set():
                if not slots.acquire(timeout=0.5):
                    continue  # every slot busy: receive nothing, so no message waits in our hands
                try:
                    messages = self._receive(wait_seconds=1)
                    if messages and stop.is_set():
                        self._hand_back(messages)
                        messages = []
                except TransientBackendError as exc:
                    logger.warning("queue busy, retrying", extra={"queue": self.queue, "error": str(exc)})
                    messages = []
                    stop.wait(0.5)
                except Exception:
                    logger.exception("worker error", extra={"queue": self.queue})
                    messages = []
                    stop.wait(1)
                if not messages:
                    slots.release()
                    continue
                pool.submit(self._run_batch, messages, slots)

    def _run_batch(self, messages: list[QueuedMessage], slots: threading.BoundedSemaphore) -> None:
        try:
            self._process(messages)
        except Exception:  # a delete failed: the message comes back after its visibility timeout
            logger.exception("worker error", extra={"queue": self.queue})
        finally:
            slots.release()


class LocalEngine:
    """A pool of workers per queue (batch queues, the AI queue, the handoff queue), and the sweeper on a
    timer."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        # A reply still being made when its message becomes visible again would be made twice.
        longest = settings.local_responder_delay_seconds
        if hasattr(runtime.responder, "max_seconds"):  # a model over the network: its attempts, and a margin
            longest = runtime.responder.max_seconds + 15
        if runtime.transcriber or settings.vision:  # files read first, within MEDIA_WAIT_SECONDS
            longest += settings.media_wait_seconds
        runtime.projects, runtime.senders  # noqa: B018 (PROJECTS_FILE, SMTP_URL checked at start, not at the first reply)
        if settings.visibility_timeout_seconds <= longest:
            raise ConfigurationError(
                f"REPLIES_VISIBILITY_TIMEOUT_SECONDS={settings.visibility_timeout_seconds} is not longer than"
                f" a reply may take ({longest:.0f} s)"
            )
        self.workers = [
            QueueWorker(
                runtime,
                queue,
                handlers.batch_processor,
                settings.batch_window_seconds,
                concurrency=settings.batch_concurrency,
            )
            for queue in BATCH_QUEUES
        ]
        # One AI context per invocation, like the AI queue's BatchSize: 1 in AWS: nobody waits for
        # another person's AI call.
        self.workers.append(
            QueueWorker(
                runtime, AI_QUEUE, handlers.reply_sender, batch_size=1, concurrency=settings.reply_concurrency
            )
        )
        # the hand-off notices: one worker, they are few
        self.workers.append(QueueWorker(runtime, HANDOFF_QUEUE, handlers.handoff_notifier))
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

    def stop(self, timeout: float = 60) -> None:
        """Stop receiving and wait up to `timeout` seconds in all for the batches in hand. Those still
        running then finish before the process exits (a reply is never cut between its send and its
        unlock); what was received and not begun went back to the queue."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _sweep(self) -> None:
        while not self._stop.wait(self.runtime.settings.sweep_interval_seconds):
            try:
                handlers.stalled_sweeper({"source": "local.timer"}, None)
            except Exception:
                logger.exception("sweep failed")
