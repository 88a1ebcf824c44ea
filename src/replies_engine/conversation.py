"""The conversation vocabulary shared by every stage: statuses, message ids, message entries."""

from __future__ import annotations

from typing import Any

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
