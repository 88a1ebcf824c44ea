"""Stage 2, the batch processor (docs/design.md §1, §4.5).

Group an SQS batch by conversation, order each group, then one conditional write per group takes the
lock and appends the messages not already there. The AI context goes to the AI queue. A conversation
locked by another batch sends its records back to their queue with a growing delay, and to the DLQ
past MAX_RETRY_ATTEMPTS. Failures are reported per record, so only they are retried.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from .. import clock, envelope
from ..batches import build_ai_context, send_flush_token, token_channel
from ..batching_modes import Debounce
from ..channels import AI_QUEUE, CHANNELS
from ..config import SQS_MAX_DELAY_SECONDS
from ..conversation import (
    is_locked,
    message_key,
    unreadable,
    user_message,
)
from ..envelope import FLUSH, SqsRecord, Unreadable
from ..ports import LockOutcome, OutgoingMessage, Runtime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchRecord:
    """One SQS record of a batch queue: the envelope it carries (its engine keys, read and checked)."""

    sqs: SqsRecord
    envelope: dict[str, Any]

    @property
    def is_flush(self) -> bool:
        return self.envelope["kind"] == FLUSH

    @property
    def conversation_id(self) -> str:
        return self.envelope["conversation_id"]

    @property
    def home_queue(self) -> str:
        """The batch queue of its channel: where it goes back on contention."""
        return CHANNELS[self.envelope["channel_type"]].queue


def process_batch(event: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
    """An SQS event from a batch queue → `{"batchItemFailures": [...]}`. Each record is read on its own:
    one that cannot be read fails alone and is retried until the queue's redrive policy dead-letters it."""
    failed: list[str] = []
    groups: dict[str, list[BatchRecord]] = defaultdict(list)
    for read in envelope.records(event, envelope.read):
        if isinstance(read, Unreadable):
            failed += envelope.failure(read, "batch", runtime.metrics)
        else:
            record = BatchRecord(*read)
            groups[record.conversation_id].append(record)
    for conversation_id, records in groups.items():
        try:
            if isinstance(batching := runtime.settings.batching, Debounce):
                done = _debounce_conversation(conversation_id, records, runtime, batching)
            else:
                done = _process_conversation(conversation_id, [r for r in records if not r.is_flush], runtime)
        except Exception:
            logger.exception(
                "batch failed; its records will be retried", extra={"conversation_id": conversation_id}
            )
            done = False
        if not done:
            failed.extend(r.sqs.message_id for r in records)
    return envelope.batch_failures(failed)


def _process_conversation(conversation_id: str, records: list[BatchRecord], runtime: Runtime) -> bool:
    records.sort(key=_arrival)
    batch_id = f"batch-{uuid.uuid4().hex}"
    log = {"conversation_id": conversation_id, "batch_id": batch_id}
    logger.info("batch started", extra={**log, "size": len(records)})
    messages = [user_message(r.envelope, batch_id) for r in records]
    outcome = runtime.store.lock_and_append(
        conversation_id,
        batch_id,
        messages,
        now=clock.now(),
        lock_timeout_seconds=runtime.settings.lock_timeout_seconds,
    )
    for duplicate in outcome.duplicates:
        logger.warning("duplicate message skipped", extra={**log, "message_sid": duplicate})
        runtime.metrics.add("DuplicateMessageDetected")

    if outcome.status == "duplicates":
        logger.info("batch had only messages already appended: acknowledged", extra=log)
        return True
    if outcome.status == "missing":
        return _dead_letter(records, "the conversation does not exist", runtime)
    if outcome.status == "erased":
        return _discard_erased(conversation_id, len(records), runtime)
    if outcome.status == "locked":
        runtime.metrics.add("LockContention")
        logger.info("conversation locked by another batch", extra={**log, "lock_owner": outcome.lock_owner})
        return _requeue(records, runtime)

    return _hand_to_ai(outcome, batch_id, runtime)


def _discard_erased(conversation_id: str, count: int, runtime: Runtime) -> bool:
    """Messages queued before their person's data was erased: dropped, never written back."""
    logger.info("messages of an erased conversation discarded", extra={"conversation_id": conversation_id})
    runtime.metrics.add("ErasedMessagesDiscarded", count)
    return True


def _hand_to_ai(outcome: LockOutcome, batch_id: str, runtime: Runtime, to_pending: bool = False) -> bool:
    """The locked batch's context to the AI queue; if that fails, the emergency unlock."""
    record = outcome.record
    assert record is not None  # an `acquired` outcome carries the record after the write
    conversation_id = record["conversation_id"]
    log = {"conversation_id": conversation_id, "batch_id": batch_id}
    runtime.metrics.add("BatchSize", len(outcome.appended))
    try:
        context = build_ai_context(runtime, record, batch_id)
        runtime.queue.send(AI_QUEUE, json.dumps(context, ensure_ascii=False))
    except Exception as exc:
        logger.exception("AI hand-off failed after the lock was taken: emergency unlock", extra=log)
        try:
            runtime.store.emergency_unlock(
                conversation_id, batch_id, reason=str(exc), now=clock.now(), to_pending=to_pending
            )
        except Exception:
            logger.exception("emergency unlock failed; the lease will expire", extra=log)
        return False
    logger.info("batch handed to the AI stage", extra={**log, "messages": len(context["messages"])})
    return True


# --- debounce mode (docs/design.md §4.6) ------------------------------------------------------------------


def _debounce_conversation(
    conversation_id: str, records: list[BatchRecord], runtime: Runtime, debounce: Debounce
) -> bool:
    """Messages join `pending_messages` at once and schedule a flush token; tokens run the flush."""
    messages = sorted((r for r in records if not r.is_flush), key=_arrival)
    if messages:
        now = clock.now()
        outcome = runtime.store.add_pending(
            conversation_id, [user_message(r.envelope) for r in messages], now=now
        )
        if outcome.status == "missing":
            return _dead_letter(messages, "the conversation does not exist", runtime)
        if outcome.status == "erased":
            return _discard_erased(conversation_id, len(messages), runtime)
        for duplicate in outcome.duplicates:
            logger.warning(
                "duplicate message skipped",
                extra={"conversation_id": conversation_id, "message_sid": duplicate},
            )
            runtime.metrics.add("DuplicateMessageDetected")
        assert outcome.record is not None  # add_pending returns the record after, unless it is missing
        pending = outcome.record.get("pending_messages", [])
        if pending:  # also when all were duplicates: the token that followed them may have been lost
            delay = debounce.next_look(pending, now)
            send_flush_token(runtime, conversation_id, messages[-1].envelope["channel_type"], delay)
    if any(r.is_flush for r in records):
        return _flush(conversation_id, runtime, debounce)
    return True


def _flush(conversation_id: str, runtime: Runtime, debounce: Debounce) -> bool:
    """Run the batch if the flush rule says so: lock + move the pending messages in one write."""
    settings = runtime.settings
    quarantined: set[str] = set()
    for _ in range(5):
        now = clock.now()
        record = runtime.store.get(conversation_id)
        pending = (record or {}).get("pending_messages") or []
        if record is None or not debounce.due(pending, now):
            return True  # the token that followed the newest message comes when it is due
        if is_locked(record, now, settings.lock_timeout_seconds):
            # Back later: the unlock sends a token too, but a crash between the unlock and its token
            # must not leave these messages waiting for nobody. (Tokens never multiply: one for one.)
            send_flush_token(runtime, conversation_id, token_channel(pending), max(1, debounce.quiet_seconds))
            return True
        _quarantine(runtime, conversation_id, pending, quarantined)  # before the flush drops them
        batch_id = f"batch-{uuid.uuid4().hex}"
        outcome = runtime.store.flush_pending(
            conversation_id,
            batch_id,
            pending_version=record.get("pending_version", 0),
            now=now,
            lock_timeout_seconds=settings.lock_timeout_seconds,
        )
        if outcome.status == "changed":
            continue  # a message arrived in between: decide again
        if outcome.status != "acquired":
            return True
        logger.info(
            "batch started",
            extra={"conversation_id": conversation_id, "batch_id": batch_id, "size": len(outcome.appended)},
        )
        return _hand_to_ai(outcome, batch_id, runtime, to_pending=True)
    return False  # contended: the token is retried


def _quarantine(runtime: Runtime, conversation_id: str, pending: list[Any], done: set[str]) -> None:
    """Pending messages that cannot be ordered (written by an older engine, or by hand) to their
    channel's dead-letter queue with the reason, so that the flush can drop them and the conversation
    goes on with its other messages."""
    for message in pending:
        if (reason := unreadable(message)) is None:
            continue
        if (key := json.dumps(message, sort_keys=True, default=str)) in done:
            continue
        queue = CHANNELS[token_channel([message])].queue
        runtime.queue.send(
            f"{queue}-dlq",
            json.dumps(
                {"conversation_id": conversation_id, "unreadable_pending_message": message}, default=str
            ),
            attributes={"conversation_id": conversation_id, "DeadLetterReason": f"pending message: {reason}"},
        )
        runtime.metrics.add("DeadLettered")
        logger.error(
            "unreadable pending message dead-lettered",
            extra={"conversation_id": conversation_id, "reason": reason},
        )
        done.add(key)


def _arrival(record: BatchRecord) -> tuple[str, str]:
    key = message_key(record.envelope)
    assert key is not None  # envelope.read refuses a message without an id
    return record.envelope["received_at"], key


def _requeue(records: list[BatchRecord], runtime: Runtime) -> bool:
    """Each record back to its queue with RetryAttempt + 1 and a growing delay; past the limit, to the DLQ."""
    settings = runtime.settings
    outgoing: dict[str, list[OutgoingMessage]] = defaultdict(list)
    exhausted = []
    for record in records:
        if record.sqs.retry_attempt + 1 > settings.max_retry_attempts:
            exhausted.append(record)
            continue
        delay = min(
            SQS_MAX_DELAY_SECONDS,
            settings.batch_delay_seconds + settings.requeue_delay_seconds * 2**record.sqs.retry_attempt,
        )
        attributes: dict[str, str | int] = {
            "conversation_id": record.conversation_id,
            "RetryAttempt": record.sqs.retry_attempt + 1,
        }
        outgoing[record.home_queue].append(OutgoingMessage(record.sqs.body, delay, attributes))
    for queue, messages in outgoing.items():
        runtime.queue.send_batch(queue, messages)
        runtime.metrics.add("Requeued", len(messages))
    if exhausted:
        reason = f"lock contention after {exhausted[0].sqs.retry_attempt} retries"
        return _dead_letter(exhausted, reason, runtime, logging.WARNING)
    return True


def _dead_letter(
    records: list[BatchRecord], reason: str, runtime: Runtime, level: int = logging.ERROR
) -> bool:
    """To each record's DLQ, with the reason: kept for an operator (`replies-engine dlq list`)."""
    outgoing: dict[str, list[OutgoingMessage]] = defaultdict(list)
    for record in records:
        attributes: dict[str, str | int] = {
            "conversation_id": record.conversation_id,
            "RetryAttempt": record.sqs.retry_attempt,
            "DeadLetterReason": reason,
        }
        outgoing[f"{record.home_queue}-dlq"].append(OutgoingMessage(record.sqs.body, 0, attributes))
    for queue, messages in outgoing.items():
        runtime.queue.send_batch(queue, messages)
        runtime.metrics.add("DeadLettered", len(messages))
    for record in records:
        logger.log(
            level,
            "dead-lettered",
            extra={"conversation_id": record.conversation_id, "reason": reason, **_sid(record)},
        )
    return True


def _sid(record: BatchRecord) -> dict[str, Any]:
    return {"message_sid": message_key(record.envelope)}
