"""Stage 1, step 5: which queue a validated message goes to."""

from __future__ import annotations

from typing import Any

from ..channels import CHANNELS, HANDOFF_QUEUE
from ..conversation import owned_by_human


def determine_target_queue(
    context_object: dict[str, Any], honor_hand_off_to_human: bool = False
) -> str | None:
    """The handoff queue when a human should answer, else the channel's batch queue; None if unknown.

    Handoff when a human owns the conversation (`owner`, or the rules `auto_queue_reply_message` and
    `hand_off_to_human`, the latter only with HONOR_HAND_OFF_TO_HUMAN, as in the seed), or the sender
    is listed in the channel's `auto_queue_reply_message_from_*`.
    """
    channel = CHANNELS.get(context_object.get("channel_type", ""))
    if channel is None:
        return None
    if owned_by_human(context_object, honor_hand_off_to_human):
        return HANDOFF_QUEUE
    listed = context_object.get(channel.handoff_list_attr) or []
    if isinstance(listed, str | int):  # one address written without its list
        listed = [listed]
    sender = channel.normalize_address(context_object.get("from") or "")
    if sender and sender in {channel.normalize_address(str(a)) for a in listed}:
        return HANDOFF_QUEUE
    return channel.queue
