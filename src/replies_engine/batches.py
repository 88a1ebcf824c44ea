"""What the stages share about a batch: the AI context of the batch that holds a conversation's lock
(stage 2 makes it, the sweeper re-drives it), the AI queue's dead letters, and the flush token that
wakes debounce mode's stage 2 (after a message, and after an unlock)."""

from __future__ import annotations

import json
import logging
from typing import Any

from . import envelope
from .batching_modes import Debounce
from .channels import AI_QUEUE, CHANNELS
from .conversation import HISTORY_FIELDS, awaits_reply, split_unanswered
from .mail import reply_address
from .ports import Runtime

logger = logging.getLogger(__name__)

HISTORY_MESSAGES = 20  # how much of the conversation before this batch the AI stage sees
MAX_UNANSWERED = 100  # the newest unanswered messages one AI context carries (an SQS message is ≤ 256 KiB)


def unanswered(runtime: Runtime, conversation_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the recent history, the person's messages after the last reply): a bounded read from the newest
    back, however long the conversation."""
    last = HISTORY_MESSAGES + 16
    while True:
        recent = runtime.store.messages(conversation_id, last=last)
        split = split_unanswered(recent)
        if len(recent) < last or last >= MAX_UNANSWERED:
            answered, waiting = split or ([], [m for m in recent if awaits_reply(m)])
            return answered[-HISTORY_MESSAGES:], waiting[-MAX_UNANSWERED:]
        if split and len(split[0]) >= HISTORY_MESSAGES:
            return split[0][-HISTORY_MESSAGES:], split[1]
        last *= 4


def build_ai_context(runtime: Runtime, record: dict[str, Any], batch_id: str) -> dict[str, Any]:
    """The AI queue's message (docs/design.md §4.5) for the batch that holds the lock: every message of the
    person's not answered yet (this batch's, and any an expired holder left), and the history before."""
    history, messages = unanswered(runtime, record["conversation_id"])
    latest = messages[-1]
    return {
        "conversation_id": record["conversation_id"],
        "batch_id": batch_id,
        "channel_type": latest["channel_type"],
        "messages": messages,
        "conversation": {k: v for k, v in record.items() if k not in HISTORY_FIELDS},
        "history": history,
        # the reply goes back the way the last message came (an email: to whom and from which address, `mail.py`)
        "reply_address": reply_address(record, latest),
        "first_received_at": min((m.get("timestamp") or "" for m in messages), default="") or None,
    }


def dead_letter_context(runtime: Runtime, context: dict[str, Any], reason: str) -> None:
    """Messages nobody will answer by themselves: to the AI queue's DLQ, with the reason, for an
    operator (`replies-engine dlq list ai`). Never raises: the log then keeps the trace."""
    try:
        runtime.queue.send(
            f"{AI_QUEUE}-dlq",
            json.dumps(context, ensure_ascii=False),
            attributes={"conversation_id": context["conversation_id"], "DeadLetterReason": reason},
        )
        runtime.metrics.add("DeadLettered", len(context["messages"]))
    except Exception:
        logger.exception(
            "dead-lettering failed: the messages stay unanswered in the conversation",
            extra={"conversation_id": context["conversation_id"], "reason": reason},
        )


def flush_if_pending(runtime: Runtime, record: dict[str, Any] | None) -> None:
    """After an unlock: messages that waited for the lock get their batch (debounce mode)."""
    if record and record.get("pending_messages") and isinstance(runtime.settings.batching, Debounce):
        send_flush_token(runtime, record["conversation_id"], token_channel(record["pending_messages"]))


def token_channel(pending: list[Any]) -> str:
    """The channel of the newest pending message that names one: its batch queue takes the token (any
    would do: a flush is per conversation)."""
    named: list[str] = [
        m["channel_type"] for m in pending if isinstance(m, dict) and m.get("channel_type") in CHANNELS
    ]
    return named[-1] if named else next(iter(CHANNELS))


def send_flush_token(
    runtime: Runtime, conversation_id: str, channel_type: str, delay_seconds: int = 0
) -> None:
    token = envelope.flush_token(conversation_id, channel_type)
    runtime.queue.send(
        CHANNELS[channel_type].queue,
        json.dumps(token),
        delay_seconds=delay_seconds,
        attributes={"conversation_id": conversation_id, "RetryAttempt": 0},
    )
