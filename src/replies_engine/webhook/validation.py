"""Stage 1, steps 3 and 4: find the active conversation, then apply its rules.

Both return the seed's result shape: `{"valid": True, "data": context_object}` or
`{"valid": False, "error_code": …, "message": …}`.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import clock
from ..channels import BSUID_GSI, CHANNELS, WHATSAPP_GSI, bsuid
from ..config import ConfigurationError
from ..conversation import (
    HISTORY_FIELDS,
    PROCESSING_REPLY,
    is_locked,
    message_key,
    sender_bsuid,
)
from ..envelope import for_conversation
from ..observability import mask
from ..ports import ConversationStore, StoreError, TransientStoreError

logger = logging.getLogger(__name__)

Result = dict[str, Any]


def ok(data: dict[str, Any]) -> Result:
    return {"valid": True, "data": data}


def fail(error_code: str, message: str) -> Result:
    return {"valid": False, "error_code": error_code, "message": message}


def check_conversation_exists(context_object: dict[str, Any], store: ConversationStore) -> Result:
    """Query the channel's GSI for the active (`task_complete = 0`) conversation; newest wins.

    On success `data` is the envelope for the queue (`envelope.for_conversation`: the record's fields
    without its history, then the message's), and `record` the record alone.
    """
    channel = CHANNELS.get(context_object.get("channel_type", ""))
    if channel is None or channel.gsi is None:
        return fail(
            "CONFIGURATION_ERROR", f"no GSI configured for channel {context_object.get('channel_type')!r}"
        )
    companies = channel.addresses(context_object.get("to") or "")
    person = sender_bsuid(context_object) if channel.gsi is WHATSAPP_GSI else None
    recipient = (
        None
        if bsuid(context_object.get("from"))
        else channel.normalize_address(context_object.get("from") or "")
    )
    id_field = channel.provider.message_id_field
    missing = [
        name
        for name, value in (
            ("from", recipient or person),
            ("to", companies),
            (id_field, message_key(context_object)),
        )
        if not value
    ]
    if missing:
        return fail("MISSING_REQUIRED_FIELD", f"missing required field(s): {', '.join(missing)}")
    try:
        records = []
        for company in companies:  # the first address with an active conversation
            # by phone number; by BSUID where WhatsApp withholds the number (or none is on record yet)
            if recipient and (records := store.find_active(channel.gsi, company, recipient)):
                break
            if person and (records := store.find_active(BSUID_GSI, company, person)):
                break
    except ConfigurationError as exc:
        return fail("CONFIGURATION_ERROR", str(exc))
    except TransientStoreError as exc:
        return fail("DB_TRANSIENT_ERROR", str(exc))
    except StoreError as exc:
        return fail("DB_QUERY_ERROR", str(exc))
    if not records:
        return fail(
            "CONVERSATION_NOT_FOUND",
            f"no active {channel.name} conversation between {', '.join(map(mask, companies))}"
            f" and {mask(recipient or person or '')}",
        )
    records.sort(key=lambda r: str(r.get("created_at") or ""), reverse=True)
    if len(records) > 1:
        logger.warning(
            "several active conversations match; the newest wins",
            extra={
                "conversation_id": records[0].get("conversation_id"),
                "candidates": [r.get("conversation_id") for r in records],
                "message_sid": message_key(context_object),
            },
        )
    record = {k: v for k, v in records[0].items() if k not in HISTORY_FIELDS}
    return {**ok(for_conversation(context_object, record)), "record": record}


def validate_conversation_rules(
    context_object: dict[str, Any], lock_timeout_seconds: float | None = None
) -> Result:
    """PROJECT_INACTIVE, CHANNEL_NOT_ALLOWED, CONVERSATION_LOCKED, checked in that order.

    With `lock_timeout_seconds`, a lock older than that is an expired lease and does not count.
    """
    if context_object.get("project_status") != "active":
        return fail(
            "PROJECT_INACTIVE", f"project status is {context_object.get('project_status')!r}, not 'active'"
        )
    channel_type = context_object.get("channel_type")
    if channel_type not in (context_object.get("allowed_channels") or []):
        return fail("CHANNEL_NOT_ALLOWED", f"channel {channel_type!r} is not allowed for this conversation")
    if context_object.get("conversation_status") == PROCESSING_REPLY and (
        lock_timeout_seconds is None or is_locked(context_object, clock.now(), lock_timeout_seconds)
    ):
        return fail("CONVERSATION_LOCKED", "a reply to this conversation is being prepared")
    return ok(context_object)
