"""Who answers a conversation: the AI (`owner: "ai"`, the default) or a human (`owner: "human"`).

Three ways to a human: a rule (stage 1: `auto_queue_reply_message`, the sender lists,
`hand_off_to_human`), the AI (its responder asks for one, `Handoff`), an operator. Two ways back: an
operator, or HANDOFF_AUTO_RETURN_HOURS of human silence (the sweeper). Each hand-off and hand-back is
an event in the thread (`role: "event"`), so that the AI sees, once it answers again, that a human
answered in between. While a human owns it, the person's messages are recorded and never answered
by the AI; the reply stage checks again right before every part it sends.

An operator's reply goes out through the channel's sender by the channel's rules (split, opt-out,
WhatsApp's window) and is recorded as `role: "agent"` with the operator's name.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from . import clock
from .channels import CHANNELS, HANDOFF_QUEUE
from .config import ConfigurationError
from .conversation import AI, AI_RESPONSE_SENT, HANDED_OFF, HUMAN, flag, outside_window, owned_by_human
from .mail import reply_address, thread
from .parts import split_reply
from .ports import PERSON_OPTED_OUT, BackendError, Runtime
from .sending import AMBIGUOUS, REFUSED, Unsent, in_doubt, recorded_reply, send_part

logger = logging.getLogger(__name__)

_THREAD = 50  # how far back an operator's reply looks for the person's last message
TIMEOUT = "timeout"  # who hands back after HANDOFF_AUTO_RETURN_HOURS


class OperatorError(Exception):
    """An operator's action refused: `status` the HTTP status that says why (404, 409, 502, 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def handoff_reply_text(runtime: Runtime, record: dict[str, Any]) -> str:
    """What the person is told when a human takes their conversation, so that they never wait in
    silence: the record's own `handoff_reply_text`, else its project's (PROJECTS_FILE), else
    HANDOFF_REPLY_TEXT."""
    own = record.get("handoff_reply_text")
    try:
        project = runtime.projects.get(record.get("project_id") or "", {}).get("handoff_reply_text")
    except ConfigurationError:  # a bad PROJECTS_FILE never stops the intake: the reply stage reports it
        project = None
    for text in (own, project):
        if isinstance(text, str) and text.strip():
            return text.strip()
    return runtime.settings.handoff_reply_text


def handoff_changes(reason: str, by: str, now: str) -> dict[str, Any]:
    """What a hand-off sets on the record."""
    return {"owner": HUMAN, "handed_off_at": now, "handoff_reason": reason, "handed_off_by": by}


def event(kind: str, text: str, now: str, **fields: Any) -> dict[str, Any]:
    """An event of the thread: shown to humans, given to the AI as context, never answered."""
    return {
        "message_id": f"event-{uuid.uuid4().hex}",
        "role": "event",
        "event": kind,
        "content": text,
        "timestamp": now,
        "no_reply": kind,
        **fields,
    }


def hand_off(runtime: Runtime, conversation_id: str, reason: str, *, by: str) -> dict[str, Any]:
    """A human answers from now on (`by`: "ai", or the operator's name); the handoff queue is told."""
    record = conversation(runtime, conversation_id)
    now = clock.iso()
    if record.get("owner") != HUMAN:
        text = f"Handed to a human by {by}: {reason}"
        runtime.store.write_unlocked(
            conversation_id,
            changes=handoff_changes(reason, by, now),
            message=event("handed_off", text, now, by=by),
        )
        notify_handoff(runtime, record, reason, by)
        runtime.metrics.add("HandedOff", cause="ai" if by == AI else "operator")
        logger.info(
            "handed to a human",
            extra={"conversation_id": conversation_id, "by": by, "handoff_reason": reason},
        )
    return runtime.store.get(conversation_id) or record


def hand_back(runtime: Runtime, conversation_id: str, *, by: str) -> dict[str, Any]:
    """The AI answers again; the rules' flags that handed it off are cleared, or the next message would
    hand it off again (a sender listed in `auto_queue_reply_message_from_*` still goes to a human)."""
    record = conversation(runtime, conversation_id)
    now = clock.iso()
    if owned_by_human(record, runtime.settings.honor_hand_off_to_human):
        text = (
            f"Handed back to the AI by {by}: a human answered in between."
            if by != TIMEOUT
            else "Handed back to the AI: no human answered the messages above."
        )
        runtime.store.write_unlocked(
            conversation_id,
            changes={
                "owner": AI,
                "handed_back_at": now,
                "auto_queue_reply_message": False,
                "hand_off_to_human": False,
                "assigned_to": None,  # the claim ends with the human's turn
            },
            message=event("handed_back", text, now, by=by),
        )
        runtime.metrics.add("HandedBack", by=TIMEOUT if by == TIMEOUT else "operator")
        logger.info("handed back to the AI", extra={"conversation_id": conversation_id, "by": by})
    return runtime.store.get(conversation_id) or record


def human_silent_too_long(record: dict[str, Any], hours: float) -> bool:
    """HANDOFF_AUTO_RETURN_HOURS: has the human who owns this conversation said nothing for `hours`
    (since the hand-off, or their last reply)?"""
    if not hours or record.get("owner") != HUMAN:
        return False
    since = max(record.get("handed_off_at") or "", record.get("last_agent_reply_at") or "")
    return bool(since) and clock.now() - clock.parse_iso(since) > hours * 3600


def notify_handoff(
    runtime: Runtime, record: dict[str, Any], reason: str, by: str, channel: str | None = None
) -> None:
    """Tell whoever consumes the handoff queue that a human is needed (on `channel`, when known)."""
    notice = {
        "kind": "handoff",
        "conversation_id": record["conversation_id"],
        "channel_type": channel,
        "handoff_reason": reason,
        "by": by,
        "conversation": {
            k: v for k, v in record.items() if k not in ("pending_messages", "refused_messages")
        },
    }
    runtime.queue.send(
        HANDOFF_QUEUE,
        json.dumps(notice, ensure_ascii=False),
        attributes={"conversation_id": record["conversation_id"], "HandoffReason": reason[:200]},
    )


def assign(
    runtime: Runtime, conversation_id: str, operator: str, *, take_over: bool = False
) -> dict[str, Any]:
    """`operator` claims the conversation, so that nobody answers twice: the record after.
    OperatorError 409 when another operator holds it and this is not a take-over."""
    claimed, record = runtime.store.assign(conversation_id, operator, take_over=take_over, now=clock.now())
    if record is None:
        raise OperatorError(404, f"no conversation {conversation_id!r}")
    if not claimed:
        raise OperatorError(
            409, f"{record.get('assigned_to')} has claimed this conversation: take it over to answer it"
        )
    logger.info("conversation claimed", extra={"conversation_id": conversation_id, "operator": operator})
    return record


def human_reply(
    runtime: Runtime,
    conversation_id: str,
    text: str,
    operator: str,
    *,
    take_over: bool = False,
    template: bool = False,
) -> dict[str, Any]:
    """Send an operator's reply to the person, by the channel's rules, and record it. Replying takes the
    conversation over (a human owns it from then on, so the AI never answers beside them) and claims
    it; one another operator has claimed is answered only as a take-over (OperatorError 409).
    `template`: WhatsApp's approved template (WHATSAPP_TEMPLATE_CONTENT_SID) instead of `text`, the one
    message that may go once the 24-hour window closed."""
    text = (text or "").strip()
    template_sid = runtime.settings.whatsapp_template_content_sid if template else None
    if template and not template_sid:
        raise OperatorError(409, "no template is configured (WHATSAPP_TEMPLATE_CONTENT_SID)")
    if not text and not template_sid:
        raise OperatorError(400, "the reply is empty")
    record = conversation(runtime, conversation_id)
    latest = _to_answer(runtime, record, template=bool(template_sid))
    # claimed right before the send, in one conditional write, whatever the read said: a take-over
    # since then makes this a 409, not a second answer
    assign(runtime, conversation_id, operator, take_over=take_over)
    if not owned_by_human(record, runtime.settings.honor_hand_off_to_human):
        hand_off(runtime, conversation_id, "an operator replied", by=operator)
    channel = CHANNELS[latest["channel_type"]]
    now = clock.iso()
    note: dict[str, Any] = {
        "batch_id": f"agent-{uuid.uuid4().hex}",
        "conversation_id": conversation_id,
        "channel_type": channel.name,
        **reply_address(record, latest),
        **(thread(latest) if channel.provider.threads else {}),
        "timestamp": now,
    }
    if template_sid:
        content = f"[template {template_sid}]"
        variables = record.get("whatsapp_template_variables")
        note.update(template=template_sid, template_variables=variables, content=content, texts=[content])
    else:
        note["texts"] = split_reply(text, channel.max_reply_length, runtime.settings.max_reply_parts)[0]
    texts = note["texts"]
    sent, unsent = _send(runtime, note)
    if (
        unsent is not None
        and unsent.how == REFUSED
        and getattr(unsent.error, "kind", None) == PERSON_OPTED_OUT
    ):
        runtime.store.write_unlocked(conversation_id, changes={"opted_out": True, "opted_out_at": now})
    message = None
    if sent:
        reply = recorded_reply(
            {**note, "parts": sent, "in_doubt": unsent is not None and unsent.how == AMBIGUOUS}
        )
        message = {**reply, "role": "agent", "operator": operator}
        del message["batch_id"]  # the operator's own, not a batch of the conversation's
        try:
            runtime.store.write_unlocked(
                conversation_id, changes={"last_agent_reply_at": now}, message=message
            )
        except BackendError:  # it went: "try again" would send it twice
            logger.exception(
                "an operator's reply went but could not be recorded",
                extra={"conversation_id": conversation_id},
            )
            message = {**message, "recorded": False}
        runtime.metrics.add("AgentReplies")
    if unsent is not None:
        failure = _failure(unsent)
        went = f"; {len(sent)} of {len(texts)} parts went and are in the thread" if sent else ""
        raise OperatorError(failure.status, f"{failure}{went}")
    assert message is not None  # a reply has at least one part, and every part went
    return message


def _to_answer(runtime: Runtime, record: dict[str, Any], *, template: bool = False) -> dict[str, Any]:
    """The person's latest message, which the operator answers on its channel; OperatorError 409 when
    nothing may be sent to them (a template goes on WhatsApp only, and after the window only)."""
    if flag(record.get("opted_out")):
        raise OperatorError(409, "the person opted out (STOP): nothing is sent to them")
    recent = runtime.store.messages(record["conversation_id"], last=_THREAD)
    latest = next((m for m in reversed(recent) if m.get("role") == "user"), None)
    if latest is None or latest.get("channel_type") not in CHANNELS:
        raise OperatorError(409, "the person has not written yet: there is nobody to answer")
    if latest["channel_type"] == "email" and record.get("email_suppressed"):
        reason = record["email_suppressed"].get("reason", "a bounce")
        raise OperatorError(409, f"their address answered with a {reason}: no email goes to it")
    closed = outside_window(record, latest["channel_type"], [latest])
    if closed and not template:
        raise OperatorError(409, "WhatsApp's 24-hour window closed: only an approved template may go now")
    if template and not closed:
        raise OperatorError(409, "a template is for WhatsApp once its 24-hour window closed: write a reply")
    return latest


def _send(runtime: Runtime, note: dict[str, Any]) -> tuple[list[str], Unsent | None]:
    """The note's parts, in order, until one does not surely go: the ids of those sent (one that may
    have gone recorded as in doubt, so nobody sends it again), and the part that did not."""
    sent: list[str] = []
    for part in range(len(note["texts"])):
        went = send_part(runtime, note, part)
        if isinstance(went, Unsent):
            if went.how == AMBIGUOUS:
                sent.append(in_doubt(note, part))
            return sent, went
        sent.append(went)
    return sent, None


def _failure(unsent: Unsent) -> OperatorError:
    """What the operator is told about a part that did not surely go."""
    if unsent.how == REFUSED:
        return OperatorError(502, f"the provider refused the reply: {unsent.error}")
    if unsent.how == AMBIGUOUS:
        return OperatorError(
            502, f"the reply may have been sent (no answer from the provider): {unsent.error}"
        )
    return OperatorError(503, f"the reply could not be sent now, try again: {unsent.error}")


def closing(note: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """The status and changes with which a fully sent note unlocks: a hand-off the AI asked for makes
    a human the owner in the same write."""
    if note.get("hand_off"):
        return HANDED_OFF, handoff_changes(note["hand_off"], AI, clock.iso())
    return AI_RESPONSE_SENT, None


def conversation(runtime: Runtime, conversation_id: str) -> dict[str, Any]:
    """The record, or OperatorError 404 (410 once its person's data was erased)."""
    record = runtime.store.get(conversation_id)
    if record is None:
        raise OperatorError(404, f"no conversation {conversation_id!r}")
    if record.get("erased_at"):
        raise OperatorError(410, f"the person's data in {conversation_id!r} was erased")
    return record
