"""Stage 1, step 5: which queue a validated message goes to."""

from __future__ import annotations

from typing import Any

from ..channels import CHANNELS, HANDOFF_QUEUE


def determine_target_queue(
    context_object: dict[str, Any], honor_hand_off_to_human: bool = False
) -> str | None:
    """The handoff queue when a human should answer, else the channel's batch queue; None if unknown.

    Handoff when: `hand_off_to_human` (only with HONOR_HAND_OFF_TO_HUMAN, as in the seed),
    `auto_queue_reply_message`, or the sender is listed in the channel's `auto_queue_reply_message_from_*`.
    """
    channel = CHANNELS.get(context_object.get("channel_type", ""))
    if channel is None:
        return None
    if handed_off(context_object, honor_hand_off_to_human):
        return HANDOFF_QUEUE
    listed = context_object.get(channel.handoff_list_attr) or []
    if isinstance(listed, str | int):  # one address written without its list
        listed = [listed]
    sender = channel.normalize_address(context_object.get("from") or "")
    if sender and sender in {channel.normalize_address(str(a)) for a in listed}:
        return HANDOFF_QUEUE
    return channel.queue


def handed_off(record: dict[str, Any], honor_hand_off_to_human: bool = False) -> bool:
    """Humans answer this conversation (`auto_queue_reply_message`, or `hand_off_to_human` when honored)."""
    return flag(record.get("auto_queue_reply_message")) or (
        honor_hand_off_to_human and flag(record.get("hand_off_to_human"))
    )


def flag(value: Any) -> bool:
    """A record's boolean: true, 1 or "true" (records imported by hand are not always typed)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return value is True or value == 1
