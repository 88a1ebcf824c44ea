"""Stage 3, the reference reply stage: produce the reply, send it, release the lock (only its holder).

For each AI-queue record: picking it up starts the lease again, and a heartbeat renews it while the
responder works, so a slow model keeps the lock and only a dead holder loses it. If the batch no
longer holds the lock (its lease expired and a new batch or the sweeper took it over and answers its
messages), the stale reply is not sent. A responder failure, or a send that failed for now, is
retried with the lock kept (the record is reported failed); any other send failure dead-letters the
context with the reason and unlocks to `processing_error`. The reply is noted on the record before it
goes (`sending`) and the record is acknowledged once it went, whatever the unlock does: a person never
gets the same reply twice. The reply lists the messages it `answers`: exactly those the responder saw.

Debounce mode (supersede): if newer messages are pending when the reply is ready, `regenerate` moves
them in under the same lock and sends the extended context back through the AI queue; `drop`
unlocks and lets the next batch answer. A conversation handed to a human meanwhile gets no AI reply.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from .. import clock
from ..batching.processor import dead_letter_context, flush_if_pending
from ..bootstrap import Runtime
from ..channels import AI_QUEUE
from ..conversation import AI_RESPONSE_SENT, HANDED_OFF, PROCESSING_ERROR, REPLY_SUPERSEDED, holds
from ..ports import TransientBackendError
from ..webhook.routing import handed_off
from .senders import TransientSendError

logger = logging.getLogger(__name__)

_UNLOCK_ATTEMPTS = 3
RETRY_BACKOFF_SECONDS = 10  # a failed reply's wait before its first retry, doubled with each receive
RETRY_MAX_WAIT_SECONDS = 120  # and at most this: well within the lease (LOCK_TIMEOUT_SECONDS) it keeps
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
            _retry_soon(runtime, record)
    return {"batchItemFailures": failed}


def _retry_soon(runtime: Runtime, record: dict[str, Any]) -> None:
    """A failed reply comes back after a short, growing backoff, not after the queue's visibility
    timeout (12 minutes in AWS): well within the lease that it keeps."""
    receives = int((record.get("attributes") or {}).get("ApproximateReceiveCount") or 1)
    try:
        runtime.queue.change_visibility(
            AI_QUEUE,
            record["receiptHandle"],
            min(RETRY_BACKOFF_SECONDS * 2 ** (receives - 1), RETRY_MAX_WAIT_SECONDS),
        )
    except Exception as exc:  # it comes back after the visibility timeout instead
        logger.warning("could not shorten the retry's wait", extra={"error": str(exc)})


def close_in_doubt(runtime: Runtime, conversation_id: str, batch_id: str, sending: dict[str, Any]) -> str:
    """A holder died while sending the reply it noted. Asked, the sender tells whether it went out:
    then it is recorded (`delivery: sent`, or `unknown` when the provider cannot tell: it may have
    reached the person, so it is never sent twice) and the lock released: "recorded". If it surely did
    not go out, the note is cleared and the lock kept, for the batch to be answered: "resend". "lost":
    `batch_id` no longer holds the lock."""
    log = {"conversation_id": conversation_id, "batch_id": batch_id}
    went = runtime.senders[sending["channel_type"]].went_out(sending)
    if went is False:
        logger.warning("holder died before its reply went out: it will be answered", extra=log)
        renewed = runtime.store.renew_lock(
            conversation_id, batch_id, now=clock.now(), changes={"sending": {}}
        )
        return "lost" if renewed is None else "resend"
    reply = {
        **sending,
        "message_id": went or f"unknown-{batch_id}",
        "delivery": "sent" if went else "unknown",
    }
    after = runtime.store.release_lock(
        conversation_id, batch_id, status=AI_RESPONSE_SENT, now=clock.now(), reply=reply
    )
    if after is None:
        return "lost"
    runtime.metrics.add("ReplyInDoubt" if went is None else "ReplyRecovered")
    logger.warning(
        "holder died while sending: its reply is recorded, never sent twice",
        extra={**log, "delivery": reply["delivery"]},
    )
    flush_if_pending(runtime, after)
    return "recorded"


def _reply(context: dict[str, Any], runtime: Runtime) -> bool:
    conversation_id, batch_id = context["conversation_id"], context["batch_id"]
    log = {"conversation_id": conversation_id, "batch_id": batch_id}
    # Picked up: the lease starts again here, however long the context waited in the queue.
    held = runtime.store.renew_lock(conversation_id, batch_id, now=clock.now())
    if held is None:
        logger.warning("batch no longer holds the lock: its reply is not made", extra=log)
        return True
    # an earlier attempt died while sending: unless its reply surely did not go, it is not made again
    if (
        held.get("sending")
        and close_in_doubt(runtime, conversation_id, batch_id, held["sending"]) != "resend"
    ):
        return True

    with Heartbeat(runtime, conversation_id, batch_id):  # a slow model keeps the lock; a dead one not
        text = runtime.responder.respond(context)
    for _ in range(_ATTEMPTS):
        record = _holds_lock(runtime, conversation_id, batch_id)
        if record is None:  # the lease ran out (the heartbeat could not renew it) and was taken over
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
    address = context.get("reply_address") or {}
    reply = {
        "message_id": None,
        "role": "assistant",
        "content": text,
        "timestamp": clock.iso(),  # noted: a sender asked later whether it went looks from here
        "channel_type": context["channel_type"],
        "batch_id": batch_id,
        "answers": [m["message_id"] for m in context["messages"]],  # exactly what the responder saw
        "to": address.get("to"),
        "from": address.get("from"),
    }
    # Noted before it goes: if this holder dies after the send, whoever finds the note asks the sender
    # whether it went, and records it instead of answering again. Nobody gets the same answer twice.
    if (
        runtime.store.renew_lock(conversation_id, batch_id, now=clock.now(), changes={"sending": reply})
        is None
    ):
        logger.warning("lock lost before the send: the stale reply is not sent", extra=log)
        return True
    try:
        provider_id = runtime.senders[reply["channel_type"]].send(
            reply["channel_type"], address.get("to"), address.get("from"), text, context
        )
    except (TransientSendError, TransientBackendError):
        logger.warning(
            "sending failed for now: the reply will be retried, the lock kept", extra=log, exc_info=True
        )
        runtime.store.renew_lock(conversation_id, batch_id, now=clock.now(), changes={"sending": {}})
        return False
    except Exception as exc:
        logger.exception("sending the reply failed", extra=log)
        dead_letter_context(runtime, context, f"the reply could not be sent: {exc}")
        _unlock(runtime, log, status=PROCESSING_ERROR, reply=None, error=str(exc))
        return True

    # Sent: from here on the record is never reported failed, or the person would get it twice.
    _unlock(
        runtime,
        log,
        status=AI_RESPONSE_SENT,
        reply={**reply, "message_id": provider_id, "timestamp": clock.iso()},
    )
    if context.get("first_received_at"):
        runtime.metrics.add("EndToEndSeconds", clock.now() - clock.parse_iso(context["first_received_at"]))
    logger.info("reply sent", extra={**log, "provider_message_id": provider_id})
    return True


class Heartbeat:
    """Renews the batch's lease every third of LOCK_TIMEOUT_SECONDS while the responder works: the
    lease is there to free the lock of a dead holder, not of a slow one."""

    def __init__(self, runtime: Runtime, conversation_id: str, batch_id: str) -> None:
        self.runtime, self.conversation_id, self.batch_id = runtime, conversation_id, batch_id
        self.interval = runtime.settings.lock_timeout_seconds / 3
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{batch_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if (
                    self.runtime.store.renew_lock(self.conversation_id, self.batch_id, now=clock.now())
                    is None
                ):
                    return  # taken over: the reply will not be sent (checked after the responder)
            except Exception as exc:  # the next beat tries again; the lease has two more thirds
                logger.warning(
                    "lease renewal failed",
                    extra={
                        "conversation_id": self.conversation_id,
                        "batch_id": self.batch_id,
                        "error": str(exc),
                    },
                )


def _holds_lock(runtime: Runtime, conversation_id: str, batch_id: str) -> dict | None:
    """The record while `batch_id` holds its lock, else None."""
    record = runtime.store.get(conversation_id)
    return record if holds(record, batch_id) else None


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
