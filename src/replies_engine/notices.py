"""The handoff queue's consumer: people are told when a person waits for a human.

The queue holds what goes to a human: each message of a conversation a human answers (stage 1), the
notice of a hand-off by the AI or an operator (`handoff.notify_handoff`), and an AI context whose reply
could not go (WhatsApp's window closed). From them the notifiers (`Runtime.notifiers`: a webhook, an
SNS topic) get ONE notice per hand-off, never one per message: a message is a hand-off's only when it
started it (a routing rule handed the conversation over on it). While an operator holds the
conversation (`assigned_to`), they are told of each new message the person sends. A notice names the
person by name and a masked address and says why in a fixed phrase: never what the person wrote. A
notice that does not go fails its record: the queue gives it again (at least once: a notifier that
took it before another failed gets it again), and dead-letters it past its redrive policy.
Without a notifier configured the records are acknowledged: the inbox, not the queue, is where
operators see who waits.
"""

from __future__ import annotations

import logging
from typing import Any

from . import envelope
from .conversation import AI
from .observability import mask
from .ports import Record, Runtime

logger = logging.getLogger(__name__)

HANDOFF, MESSAGE = "handoff", "message"  # a notice's kind
WINDOW = "whatsapp_window_closed"  # who handed it over: nobody, the channel's rule


def notify_handoffs(event: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
    """An SQS event from the handoff queue → `{"batchItemFailures": [...]}`."""
    return envelope.each_record(
        event, envelope.read_handoff, "handoff", runtime.metrics, lambda item: _notify(item, runtime)
    )


def _notify(item: dict[str, Any], runtime: Runtime) -> bool:
    """Tell every notifier of the notice `item` is worth (if any); True: done."""
    notice = notice_for(item, runtime)
    if notice is not None:
        for notifier in runtime.notifiers:
            notifier.notify(notice)
        runtime.metrics.add("HandoffNotices", kind=notice["kind"])
        logger.info(
            "hand-off notice sent",
            extra={"conversation_id": notice["conversation_id"], "kind": notice["kind"]},
        )
    return True


def notice_for(item: dict[str, Any], runtime: Runtime) -> Record | None:
    """The notice a handoff queue item is worth, or None (a message of a hand-off already told). A
    person's message carries its conversation's fields (the envelope), `handoff_reason` among them:
    only a notice's `kind`, or an AI context's `messages`, make an item a hand-off of its own."""
    stored = runtime.store.get(item["conversation_id"])
    if stored is not None and stored.get("erased_at"):
        return None  # their data was erased: nobody is told of it
    conversation = stored or item.get("conversation") or {}
    conversation = {
        **conversation,
        "conversation_id": item["conversation_id"],
        "channel_type": item.get("channel_type"),
    }
    if item.get("kind") == HANDOFF:
        return _notice(HANDOFF, conversation, runtime, by=item.get("by") or AI)
    if isinstance(item.get("messages"), list):  # an AI context whose reply could not go: the window
        return _notice(HANDOFF, conversation, runtime, by=WINDOW)
    if _started_the_handoff(item, conversation):
        return _notice(HANDOFF, conversation, runtime, by="rule")
    if holder := conversation.get("assigned_to"):
        return _notice(MESSAGE, conversation, runtime, to=holder)
    return None


def _started_the_handoff(item: dict[str, Any], conversation: Record) -> bool:
    """Did this message hand the conversation over (a routing rule, on its arrival)?"""
    return (
        conversation.get("handed_off_by") == "rule"
        and bool(item.get("received_at"))
        and conversation.get("handed_off_at") == item.get("received_at")
    )


def _notice(kind: str, conversation: Record, runtime: Runtime, **fields: Any) -> Record:
    """The notice: who waits (their name and a masked address: notices are read in chat channels), on
    which channel, why, and where to answer; `text` for a chat webhook, `subject` for email."""
    who = _who(conversation)
    channel = conversation.get("channel_type") or ""
    inbox = f"{runtime.settings.public_base_url}/inbox" if runtime.settings.public_base_url else None
    if kind == HANDOFF:
        text = f"{who} waits for a human on {channel or 'a channel'}: {_why(fields['by'])}."
        subject = f"A person waits for a human: {who}"
    else:
        text = f"{who} wrote again in the conversation you hold ({fields['to']})."
        subject = f"New message from {who}"
    if inbox:
        text += f" {inbox}"
    return {
        "kind": kind,
        "text": text,
        "subject": subject,
        "conversation_id": conversation["conversation_id"],
        "channel": channel,
        "person": who,
        "inbox_url": inbox,
        **fields,
    }


def _why(by: str) -> str:
    """Why a human is needed, in a fixed phrase: the AI's own reason, an operator's, may quote what the
    person wrote, and a notice goes to chat channels; the inbox shows the reason itself."""
    if by == "rule":
        return "a routing rule"
    if by == AI:
        return "the AI asked for one"
    if by == WINDOW:
        return "WhatsApp's 24-hour window closed"
    return "an operator took it over"


def _who(conversation: Record) -> str:
    name = conversation.get("profile_name")
    address = next(
        (
            conversation[k]
            for k in ("gsi_recipient_tel", "gsi_recipient_email", "recipient_bsuid")
            if isinstance(conversation.get(k), str) and conversation[k]
        ),
        None,
    )
    masked = mask(address) if address else None
    return " ".join(filter(None, [name, f"({masked})" if masked and name else masked])) or "Someone"
