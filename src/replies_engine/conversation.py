"""The conversation vocabulary shared by every stage: statuses, message ids, message entries."""

from __future__ import annotations

from typing import Any

from . import clock

PROCESSING_REPLY = "processing_reply"  # locked
AI_RESPONSE_SENT = "ai_response_sent"
PROCESSING_ERROR = "processing_error"
PROCESSING_TIMEOUT = "processing_timeout"

# Fields that grow with the conversation: kept in the record, never copied into queue messages.
HISTORY_FIELDS = frozenset({"messages", "pending_messages", "refused_messages"})


def message_key(context_object: dict[str, Any]) -> str | None:
    """The provider's id of a message: Twilio's MessageSid, or the email's Message-ID."""
    return context_object.get("message_sid") or context_object.get("message_id")


def user_message(context_object: dict[str, Any], batch_id: str | None = None) -> dict[str, Any]:
    """A message as `messages` stores it (DESIGN.md §4.1)."""
    entry = {
        "message_id": message_key(context_object),
        "role": "user",
        "content": context_object.get("body", ""),
        "timestamp": context_object.get("received_at"),
        "channel_type": context_object.get("channel_type"),
        "batch_id": batch_id,
    }
    if context_object.get("media"):
        entry["media"] = context_object["media"]
    return entry


def lock_age(record: dict[str, Any], now: float) -> float | None:
    """Seconds since the lock was taken (`processing_started_at`); None when that is unreadable."""
    try:
        return now - clock.parse_iso(record["processing_started_at"])
    except (KeyError, TypeError, ValueError):
        return None


def is_locked(record: dict[str, Any], now: float, lock_timeout_seconds: float) -> bool:
    """Locked: `processing_reply` and its lease younger than the timeout, so that a holder that died
    cannot block a conversation for longer than the lease. A lock of unreadable age stays locked:
    only its holder or the sweeper frees it."""
    if record.get("conversation_status") != PROCESSING_REPLY:
        return False
    age = lock_age(record, now)
    return age is None or age <= lock_timeout_seconds
