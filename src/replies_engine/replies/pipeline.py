"""Stage 3, the reference reply stage: produce the reply, send it, release the lock (only its holder).

For each AI-queue record: if the batch no longer holds the lock (its lease expired and another batch
took it), before or after the responder worked, the stale reply is not sent. A responder failure, or
a send that failed for now, is retried with the lock kept (the record is reported failed); any other
send failure unlocks to `processing_error`. Once a reply is sent the record is acknowledged, whatever
the unlock does, so that a person never gets the same reply twice from our retries.

Debounce mode (supersede): if newer messages are pending when the reply is ready, `regenerate` moves
them in under the same lock and sends the extended context back through the AI queue; `drop`
unlocks and lets the next batch answer. A conversation handed to a human meanwhile gets no AI reply.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from .. import clock
from ..batching.processor import flush_if_pending
from ..bootstrap import Runtime
from ..channels import AI_QUEUE
from ..conversation import AI_RESPONSE_SENT, HANDED_OFF, PROCESSING_ERROR, PROCESSING_REPLY, REPLY_SUPERSEDED
from ..ports import TransientBackendError
from ..webhook.routing import handed_off
from .senders import TransientSendError

logger = logging.getLogger(__name__)

_UNLOCK_ATTEMPTS = 3
_ROUNDS = 3  # regenerate at most this often: someone who never stops typing still gets an answer
_ATTEMPTS = 5  # re-reads when a new message races the move of the pending ones


def send_replies(event: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
    """An SQS event from the AI queue → `{"batchItemFailures": [...]}`."""
    failed = []
    for record in event.get("Records") or []:
        try:
            context = json.loads(record["body"])
            done = _reply(context, runtime)
        except Exception:
            logger.exception(
                "reply failed; it will be retried", extra={"sqs_message_id": record.get("messageId")}
            )
            done = False
        if not done:
            failed.append({"itemIdentifier": record.get("messageId")})
    return {"batchItemFailures": failed}


def _reply(context: dict[str, Any], runtime: Runtime) -> bool:
    conversation_id, batch_id = context["conversation_id"], context["batch_id"]
    log = {"conversation_id": conversation_id, "batch_id": batch_id}
    if not _holds_lock(runtime, conversation_id, batch_id):
        logger.warning("batch no longer holds the lock: its reply is not made", extra=log)
        return True

    text = runtime.responder.respond(context)
    for _ in range(_ATTEMPTS):
        record = _holds_lock(runtime, conversation_id, batch_id)
        if record is None:  # the lease may have run out while it thought
            logger.warning("lock lost while the reply was made: the stale reply is not sent", extra=log)
            return True
        if handed_off(record, runtime.settings.honor_hand_off_to_human):
            runtime.metrics.add("ReplySuperseded")
            logger.info("the conversation was handed to a human: the reply is not sent", extra=log)
            _unlock(runtime, log, status=HANDED_OFF, reply=None)
            return True
        rounds = context.get("regenerations", 0)
        if (
            not record.get("pending_messages")
            or runtime.settings.batching_mode != "debounce"
            or rounds >= _ROUNDS
        ):
            break
        runtime.metrics.add("ReplySuperseded")
        if runtime.settings.supersede == "drop":
            logger.info("newer messages arrived: the reply is dropped, the next batch answers all", extra=log)
            _unlock(runtime, log, status=REPLY_SUPERSEDED, reply=None)
            return True
        outcome = runtime.store.flush_pending(
            conversation_id,
            batch_id,
            pending_version=record.get("pending_version", 0),
            now=clock.now(),
            lock_timeout_seconds=runtime.settings.lock_timeout_seconds,
            held=True,
        )
        if outcome.status == "acquired":
            # The AI answers again, with everything, under the same lock (its lease renewed); this
            # stale reply is not sent. Back through the AI queue: a full AI pass, checked again after.
            latest = outcome.appended[-1]
            regenerate = {
                **context,
                "messages": [*context["messages"], *outcome.appended],
                "reply_address": {"from": latest.get("to"), "to": latest.get("from")},
                "regenerations": rounds + 1,
            }
            runtime.queue.send(AI_QUEUE, json.dumps(regenerate, ensure_ascii=False))
            logger.info(
                "newer messages arrived: answering again with them",
                extra={**log, "added": len(outcome.appended)},
            )
            return True
    channel_type = context["channel_type"]
    address = context.get("reply_address") or {}
    try:
        provider_id = runtime.senders[channel_type].send(
            channel_type, address.get("to"), address.get("from"), text, context
        )
    except (TransientSendError, TransientBackendError):
        logger.warning(
            "sending failed for now: the reply will be retried, the lock kept", extra=log, exc_info=True
        )
        return False
    except Exception as exc:
        logger.exception("sending the reply failed", extra=log)
        _unlock(runtime, log, status=PROCESSING_ERROR, reply=None, error=str(exc))
        return True

    # Sent: from here on the record is never reported failed, or the person would get it twice.
    reply = {
        "message_id": provider_id,
        "role": "assistant",
        "content": text,
        "timestamp": clock.iso(),
        "channel_type": channel_type,
        "batch_id": batch_id,
    }
    _unlock(runtime, log, status=AI_RESPONSE_SENT, reply=reply)
    if context.get("first_received_at"):
        runtime.metrics.add("EndToEndSeconds", clock.now() - clock.parse_iso(context["first_received_at"]))
    logger.info("reply sent", extra={**log, "provider_message_id": provider_id})
    return True


def _holds_lock(runtime: Runtime, conversation_id: str, batch_id: str) -> dict | None:
    """The record while `batch_id` holds its lock, else None."""
    record = runtime.store.get(conversation_id)
    if (
        record
        and record.get("conversation_status") == PROCESSING_REPLY
        and record.get("lock_owner") == batch_id
    ):
        return record
    return None


def _unlock(
    runtime: Runtime, log: dict, *, status: str, reply: dict | None, error: str | None = None
) -> None:
    """Release the lock; never raises. If it cannot, the lease expires and the sweeper frees it."""
    for attempt in range(_UNLOCK_ATTEMPTS):
        try:
            released = runtime.store.release_lock(
                log["conversation_id"], log["batch_id"], status=status, now=clock.now(), reply=reply
            )
            break
        except TransientBackendError:
            time.sleep(0.2 * (attempt + 1))
        except Exception:
            logger.exception("unlock failed: the lease will expire", extra=log)
            return
    else:
        logger.error("unlock kept failing: the lease will expire", extra={**log, "status": status})
        return
    if not released:
        logger.warning("unlock refused: this batch no longer holds the lock", extra={**log, "status": status})
        return
    flush_if_pending(runtime, released)  # messages that waited for the lock get their batch
    if error:
        logger.error(
            "conversation unlocked after a failed send", extra={**log, "status": status, "error": error}
        )
