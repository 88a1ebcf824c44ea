"""Stage 3's last mile: a reply goes out as ONE delivery unit, by its channel's rules.

The reply is cut to its channel's length (`parts.py`) and noted on the record before anything goes
(`sending`: the parts' `texts`, and `parts`, the provider ids of those sent). Each part is recorded as
it goes, so whoever picks the reply up after a crash (the AI queue's retry, or the sweeper's re-drive)
sends only the parts not yet sent: `settle` first asks the sender whether the part in flight went out.

Right before each part the record is read again (it is what the previous write returned): nothing goes
to a person who opted out, or whose conversation a human took over; on WhatsApp, nothing free-form goes
once 24 hours passed since the person's last message (the template goes instead, or a human gets it).

Send failures by kind (`senders.py`): transient → retried with the lock kept; ambiguous → retried, the
part looked up first; permanent → `reply_failed` with `last_error_code`, never retried (21610 and
63014 also set `opted_out`; 63016 is the closed window, as above; the others go to the AI queue's DLQ
for an operator).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from .. import clock
from ..batches import dead_letter_context, flush_if_pending
from ..channels import CHANNELS, HANDOFF_QUEUE, WINDOW_CLOSED_CODE
from ..conversation import (
    AI,
    AI_RESPONSE_SENT,
    HANDED_OFF,
    OPTED_OUT,
    PROCESSING_ERROR,
    REPLY_FAILED,
    flag,
    outside_window,
    owned_by_human,
)
from ..handoff import closing, notify_handoff
from ..mail import thread
from ..parts import split_reply
from ..ports import PERSON_OPTED_OUT, WINDOW_CLOSED, PermanentSendError, Runtime, TransientBackendError
from ..sending import AMBIGUOUS, TRANSIENT, Unsent, complete, recorded_reply, send_part

logger = logging.getLogger(__name__)

_UNLOCK_ATTEMPTS = 3


def new_note(runtime: Runtime, context: dict[str, Any], text: str) -> dict[str, Any]:
    """The delivery note of the reply `text` to the AI context `context`."""
    channel = CHANNELS[context["channel_type"]]
    texts, truncated = split_reply(text, channel.max_reply_length, runtime.settings.max_reply_parts)
    if truncated:
        runtime.metrics.add("ReplyTruncated")
        logger.warning(
            "the reply is longer than MAX_REPLY_PARTS parts: its end is not sent",
            extra={"conversation_id": context["conversation_id"], "length": len(text)},
        )
    address = context.get("reply_address") or {}
    latest = context["messages"][-1] if context["messages"] else {}
    return {
        **(thread(latest) if channel.provider.threads else {}),  # email: in the person's thread
        "message_id": None,
        "role": "assistant",
        "content": "".join(texts),
        "timestamp": clock.iso(),  # a sender asked later whether a part went looks from here
        "channel_type": context["channel_type"],
        "batch_id": context["batch_id"],
        "conversation_id": context["conversation_id"],
        "answers": [m["message_id"] for m in context["messages"]],  # exactly what the responder saw
        "to": address.get("to"),
        "from": address.get("from"),
        **({"cc": address["cc"]} if address.get("cc") else {}),
        "texts": texts,
        "parts": [],
    }


def deliver(runtime: Runtime, context: dict[str, Any], note: dict[str, Any], record: dict[str, Any]) -> bool:
    """Send the note's parts not yet sent, in order, then unlock. False: retry it (the lock kept).
    `record` is the record after the note was written; `context` the AI context of the lock's holder."""
    log = {"conversation_id": context["conversation_id"], "batch_id": context["batch_id"]}
    while not complete(note):
        if status := withheld(runtime, record, note["channel_type"]):
            logger.info("nothing more is sent", extra={**log, "status": status})
            return finish(runtime, context, note, status)
        if not note.get("template") and outside_window(record, context["channel_type"], context["messages"]):
            return window_closed(runtime, context, note)
        if note.get("unsent"):  # in flight again from here: a crash during this send means "look first"
            note = {**note, "unsent": False}
            if (written := write_note(runtime, context, note)) is None:
                return True
            record = written
        try:
            provider_id = send_part(runtime, note, len(note["parts"]))
        except Exception as exc:
            logger.exception("sending the reply failed", extra=log)
            dead_letter_context(runtime, context, f"the reply could not be sent: {exc}")
            return finish(runtime, context, note, PROCESSING_ERROR, error=str(exc))
        if isinstance(provider_id, Unsent):
            return _unsent(runtime, context, note, provider_id, log)
        note = {**note, "parts": [*note["parts"], provider_id]}
        if not complete(note):
            if (written := write_note(runtime, context, note)) is None:
                logger.warning("lock lost between parts: its new holder sends the rest", extra=log)
                return True
            record = written
    if context.get("first_received_at"):
        runtime.metrics.add("EndToEndSeconds", clock.now() - clock.parse_iso(context["first_received_at"]))
    logger.info(
        "reply sent", extra={**log, "provider_message_id": note["parts"][0], "parts": len(note["parts"])}
    )
    if note.get("hand_off"):
        return hand_to_human(runtime, context, note, note["hand_off"])
    return finish(runtime, context, note, AI_RESPONSE_SENT)


def _unsent(
    runtime: Runtime, context: dict[str, Any], note: dict[str, Any], unsent: Unsent, log: dict
) -> bool:
    """A part that did not surely go: transient, retried with the lock kept (it did not go: `unsent`);
    ambiguous, retried, the part looked up first; refused, `reply_failed`."""
    if unsent.how == TRANSIENT:
        logger.warning(
            "sending failed for now: retried, the lock kept", extra={**log, "error": str(unsent.error)}
        )
        write_note(runtime, context, {**note, "unsent": True})
        return False
    if unsent.how == AMBIGUOUS:
        logger.warning(
            "a send may have gone out: looked up before it is sent again",
            extra={**log, "error": str(unsent.error)},
        )
        return False
    assert isinstance(unsent.error, PermanentSendError)
    return refused(runtime, context, note, unsent.error)


def withheld(runtime: Runtime, record: dict[str, Any], channel: str | None = None) -> str | None:
    """Why no AI reply may go out now: the person opted out (OPTED_OUT), their address bounced or
    complained (email: REPLY_FAILED), or a human owns the conversation (HANDED_OFF, a reply
    superseded); None when one may."""
    if flag(record.get("opted_out")):
        return OPTED_OUT
    if channel == "email" and record.get("email_suppressed"):
        return REPLY_FAILED
    if owned_by_human(record, runtime.settings.honor_hand_off_to_human):
        runtime.metrics.add("ReplySuperseded")
        return HANDED_OFF
    return None


def hand_to_human(
    runtime: Runtime,
    context: dict[str, Any],
    note: dict[str, Any] | None,
    reason: str,
    changes: dict[str, Any] | None = None,
) -> bool:
    """The AI asked for a human: the unlock records its last word (the parts of it that went) and makes
    a human the owner in one write, with `changes`; then the handoff queue is told."""
    status, handed = closing({**(note or {}), "hand_off": reason})
    released = unlock(runtime, context, note, status, changes={**(handed or {}), **(changes or {})})
    if released is None:
        return True  # not ours to hand off: the lock's new holder decides
    notify_handoff(runtime, released, reason, AI, context.get("channel_type"))
    runtime.metrics.add("HandedOff", cause="ai")
    logger.info(
        "the AI handed the conversation to a human",
        extra={"conversation_id": context["conversation_id"], "handoff_reason": reason},
    )
    return True


def refused(runtime: Runtime, context: dict[str, Any], note: dict[str, Any], exc: PermanentSendError) -> bool:
    """The provider refused a part for good: `reply_failed`, never retried."""
    code = exc.code or "unknown"
    log = {"conversation_id": context["conversation_id"], "batch_id": context["batch_id"], "error_code": code}
    runtime.metrics.add("ReplyFailed", error_code=code)
    changes: dict[str, Any] = {"last_error_code": code}
    if exc.kind == WINDOW_CLOSED and not note.get("template"):
        return window_closed(runtime, context, note)
    if exc.kind == PERSON_OPTED_OUT:
        logger.warning("the person opted out or blocked the sender: nothing more is sent", extra=log)
        changes.update(opted_out=True, opted_out_at=clock.iso())
    else:
        logger.error("the provider refused the reply for good", extra={**log, "error": str(exc)})
        if not note.get("hand_off"):  # a hand-off's last word: the human it goes to sees the thread
            dead_letter_context(runtime, context, f"the provider refused the reply: {exc}")
    if note.get("hand_off"):  # the last word did not go; the hand-off stands
        return hand_to_human(runtime, context, note, note["hand_off"], changes)
    return finish(runtime, context, note, REPLY_FAILED, changes=changes)


def window_closed(runtime: Runtime, context: dict[str, Any], note: dict[str, Any]) -> bool:
    """WhatsApp's 24-hour window closed: the approved template goes instead (WHATSAPP_TEMPLATE_CONTENT_SID),
    or the conversation goes to the handoff queue with the reason and the AI's draft."""
    log = {"conversation_id": context["conversation_id"], "batch_id": context["batch_id"]}
    template = runtime.settings.whatsapp_template_content_sid
    if template and not note["parts"]:
        logger.info("WhatsApp's 24-hour window closed: the template goes instead", extra=log)
        variables = (context.get("conversation") or {}).get("whatsapp_template_variables")
        note = {
            **note,
            "template": template,
            "template_variables": variables,
            "content": f"[template {template}]",
            "texts": [f"[template {template}]"],
        }
        record = write_note(runtime, context, note)
        return True if record is None else deliver(runtime, context, note, record)
    logger.warning("WhatsApp's 24-hour window closed: handed to a human", extra=log)
    if note.get("hand_off"):  # the AI's last word cannot go either: its hand-off stands
        return hand_to_human(
            runtime, context, note, note["hand_off"], {"last_error_code": WINDOW_CLOSED_CODE}
        )
    handoff = {**context, "handoff_reason": "whatsapp_window_closed", "draft_reply": note["content"]}
    runtime.queue.send(
        HANDOFF_QUEUE,
        json.dumps(handoff, ensure_ascii=False),
        attributes={"conversation_id": context["conversation_id"], "HandoffReason": "whatsapp_window_closed"},
    )
    runtime.metrics.add("WindowClosedHandoff")
    return finish(runtime, context, note, REPLY_FAILED, changes={"last_error_code": WINDOW_CLOSED_CODE})


def finish(
    runtime: Runtime,
    context: dict[str, Any],
    note: dict[str, Any] | None,
    status: str,
    *,
    changes: dict[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """Unlock, and acknowledge the reply's record whatever the unlock does: a person never gets the
    same part twice."""
    unlock(runtime, context, note, status, changes=changes, error=error)
    return True


def unlock(
    runtime: Runtime,
    context: dict[str, Any],
    note: dict[str, Any] | None,
    status: str,
    *,
    changes: dict[str, Any] | None = None,
    error: str | None = None,
) -> dict[str, Any] | None:
    """Unlock to `status`, recording the parts that went out; never raises. The record after, or
    None when the unlock did not happen (the lease expires, or another batch holds the lock)."""
    log = {"conversation_id": context["conversation_id"], "batch_id": context["batch_id"], "status": status}
    reply = recorded_reply(note) if note and note["parts"] else None
    for attempt in range(_UNLOCK_ATTEMPTS):
        try:
            released = runtime.store.release_lock(
                context["conversation_id"],
                context["batch_id"],
                status=status,
                now=clock.now(),
                reply=reply,
                changes=changes,
            )
            break
        except TransientBackendError:
            time.sleep(0.2 * (attempt + 1))
        except Exception:
            logger.exception("unlock failed: the lease will expire", extra=log)
            return None
    else:
        logger.error("unlock kept failing: the lease will expire", extra=log)
        return None
    if not released:
        logger.warning("unlock refused: this batch no longer holds the lock", extra=log)
        return None
    flush_if_pending(runtime, released)  # messages that waited for the lock get their batch
    if error:
        logger.error("conversation unlocked after a failed send", extra={**log, "error": error})
    return released


def write_note(
    runtime: Runtime, context: dict[str, Any], note: dict[str, Any], changes: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Write the note, and `changes` (the lease starts again); the record after, None when the lock
    was lost."""
    return runtime.store.renew_lock(
        context["conversation_id"],
        context["batch_id"],
        now=clock.now(),
        changes={"sending": note, **(changes or {})},
    )
