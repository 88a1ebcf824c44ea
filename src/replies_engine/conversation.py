"""The conversation vocabulary shared by every stage: statuses, message ids, message entries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import clock
from .channels import bsuid

PROCESSING_REPLY = "processing_reply"  # locked
AI_RESPONSE_SENT = "ai_response_sent"
PROCESSING_ERROR = "processing_error"
PROCESSING_TIMEOUT = "processing_timeout"
REPLY_SUPERSEDED = "reply_superseded"  # debounce, SUPERSEDE=drop: unlocked, the next batch answers
HANDED_OFF = "handed_off"  # handed to a human while the AI worked: unlocked, no AI reply sent
REPLY_FAILED = "reply_failed"  # the provider refused the reply for good (`last_error_code`): not retried
OPTED_OUT = "opted_out"  # the person opted out (STOP) while the AI worked: unlocked, nothing sent

AI, HUMAN = "ai", "human"  # a conversation's `owner`: who answers it
WHATSAPP_WINDOW_SECONDS = 24 * 3600  # free-form messages only this long after the person's last one

# What answers the person's messages before it: the AI's reply, a human's (`agent`), or an event of the
# thread (a hand-off: a human takes them; a hand-back: a human took them).
ANSWERS = frozenset({"assistant", "agent", "event"})

# Delivery statuses (Twilio's StatusCallback), in the order they move; the final ones end it.
DELIVERY_ORDER = ("unknown", "accepted", "scheduled", "queued", "sending", "sent", "delivered", "read")
DELIVERY_FINAL = frozenset({"undelivered", "failed", "canceled"})

# What an email keeps for its reply: who to answer, who else was written to, the thread.
THREAD_FIELDS = ("email_message_id", "references", "reply_to", "cc")

# Fields that grow with the conversation: kept in the record, never copied into queue messages.
HISTORY_FIELDS = frozenset({"messages", "pending_messages", "refused_messages"})
# `no_reply` of a mail the mail service judged a virus or spam: recorded for a human, never the AI's.
WITHHELD = ("virus", "spam")
# Where a record names its person: what finds their conversations for an export or an erasure.
PERSON_FIELDS = ("gsi_recipient_tel", "gsi_recipient_email", "recipient_bsuid")


def message_key(context_object: dict[str, Any]) -> str | None:
    """The provider's id of a message: Twilio's MessageSid, or the email's Message-ID."""
    return context_object.get("message_sid") or context_object.get("message_id")


def user_message(context_object: dict[str, Any], batch_id: str | None = None) -> dict[str, Any]:
    """A message as `messages` stores it (docs/design.md §4.1), from the engine's keys of its envelope."""
    entry = {
        "message_id": message_key(context_object),
        "role": "user",
        "content": context_object.get("body", ""),
        "timestamp": context_object.get("received_at"),
        "channel_type": context_object.get("channel_type"),
        "batch_id": batch_id,
        # where it came from, so that a reply to it can go back the same way
        "from": context_object.get("from"),
        "to": context_object.get("to"),
    }
    for name in ("media", "subject", "raw_text", "attachments", *THREAD_FIELDS, *STRUCTURED):  # those it has
        if context_object.get(name):
            entry[name] = context_object[name]
    return entry


def sender_bsuid(context_object: dict[str, Any]) -> str | None:
    """The sender's BSUID: Twilio's `ExternalUserId`, or a `From` that holds one (no phone number)."""
    fields = context_object.get("provider_fields") or {}
    return bsuid(fields.get("external_user_id")) or bsuid(context_object.get("from"))


def identity(context_object: dict[str, Any]) -> dict[str, Any]:
    """Who wrote, as WhatsApp tells it through Twilio, in the record's fields: their business-scoped
    user ID (`ExternalUserId`, or a `From` without a phone number) and its parent, their username and
    their profile name."""
    fields = context_object.get("provider_fields") or {}
    found = {
        "recipient_bsuid": sender_bsuid(context_object),
        "recipient_parent_bsuid": bsuid(fields.get("parent_external_user_id")),
        "recipient_username": fields.get("profile_username") or fields.get("username"),
        "profile_name": fields.get("profile_name"),
    }
    return {k: v for k, v in found.items() if v}


STRUCTURED = ("location", "button", "in_reply_to", "referral", "forwarded")


def structured(fields: dict[str, Any]) -> dict[str, Any]:
    """What a WhatsApp message carries besides its text, from Twilio's fields (snake-cased), under names
    of its own (`STRUCTURED`): a shared `location`, a quick-reply `button`, the provider's id of the
    message it answers (`in_reply_to`), the click-to-WhatsApp ad it came from (`referral`, click id
    included), whether it was `forwarded`."""
    found: dict[str, Any] = {}
    location = {k: fields[k] for k in ("latitude", "longitude", "address", "label") if fields.get(k)}
    if "latitude" in location or "longitude" in location:
        found["location"] = location
    button = {k: fields[f"button_{k}"] for k in ("text", "payload") if fields.get(f"button_{k}")}
    if button:
        found["button"] = button
    if fields.get("original_replied_message_sid"):
        found["in_reply_to"] = fields["original_replied_message_sid"]
    referral = {
        name.removeprefix("referral_"): value
        for name, value in fields.items()
        if name.startswith("referral_") and value and name != "referral_num_media"
    }
    if referral:
        found["referral"] = referral
    if str(fields.get("forwarded", "")).lower() == "true":
        found["forwarded"] = True
    return found


def lock_age(record: dict[str, Any], now: float) -> float | None:
    """Seconds since the lock was taken (`processing_started_at`); None when that is unreadable."""
    try:
        return now - clock.parse_iso(record["processing_started_at"])
    except (KeyError, TypeError, ValueError):
        return None


def holds(record: dict[str, Any] | None, batch_id: str | None) -> bool:
    """Does `batch_id` hold the conversation's lock (expired or not: the fencing token decides)?"""
    return (
        record is not None
        and record.get("conversation_status") == PROCESSING_REPLY
        and record.get("lock_owner") == batch_id
    )


def is_locked(record: dict[str, Any], now: float, lock_timeout_seconds: float) -> bool:
    """Locked: `processing_reply` and its lease younger than the timeout, so that a holder that died
    cannot block a conversation for longer than the lease. A lock of unreadable age stays locked:
    only its holder or the sweeper frees it."""
    if record.get("conversation_status") != PROCESSING_REPLY:
        return False
    age = lock_age(record, now)
    return age is None or age <= lock_timeout_seconds


def in_order(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """By arrival (stage 1's `received_at`, the message's `timestamp`), then id: writes that raced
    (two invocations at once) may have kept them in another order."""
    return sorted(messages, key=lambda m: (m.get("timestamp") or "", m.get("message_id") or ""))


def split_unanswered(
    recent: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """(answered, unanswered) of the newest messages `recent`, oldest first: the person's messages after
    the last reply (or agent reply, or hand-off event: `ANSWERS`) are the unanswered ones (a reply covers what its batch saw, and nothing joins the
    conversation under a lock but its holder's messages and those never to be answered, `no_reply`).
    None when `recent` holds no reply: read more."""
    for i in range(len(recent) - 1, -1, -1):
        if recent[i].get("role") in ANSWERS:
            return recent[: i + 1], [m for m in recent[i + 1 :] if awaits_reply(m)]
    return None


def owned_by_human(record: dict[str, Any], honor_hand_off_to_human: bool = False) -> bool:
    """Does a human answer this conversation? `owner: "human"` (a hand-off by rule, by the AI or by
    an operator), or the rules' flags (`auto_queue_reply_message`, and `hand_off_to_human` when
    honored) on a record that has not been handed back since."""
    return (
        record.get("owner") == HUMAN
        or flag(record.get("auto_queue_reply_message"))
        or (honor_hand_off_to_human and flag(record.get("hand_off_to_human")))
    )


def flag(value: Any) -> bool:
    """A record's boolean: true, 1 or "true" (records imported by hand are not always typed)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return value is True or value == 1


def awaits_reply(message: dict[str, Any]) -> bool:
    """A message of the person's for the AI to answer: not one stage 1 answered or silenced itself
    (`no_reply`: `stop`, `help`, `opted_out`)."""
    return message.get("role") == "user" and not message.get("no_reply")


def delivery_moves(current: str | None, new: str) -> bool:
    """Does a status callback saying `new` move a delivery that is at `current`? Only forward: callbacks
    arrive out of order, and a final status (failed, undelivered) ends it."""
    if current in DELIVERY_FINAL:
        return False
    if new in DELIVERY_FINAL:
        return True
    rank = DELIVERY_ORDER.index
    return current not in DELIVERY_ORDER or rank(new) > rank(current)


def provider_ids(message: dict[str, Any]) -> list[str]:
    """The provider's ids of a reply's parts (its `message_id` alone when it was not split), those in
    doubt (`unknown-…`) left out: what a status callback can name."""
    ids = message.get("parts") or [message.get("message_id")]
    return list(dict.fromkeys(i for i in ids if i and not i.startswith("unknown-")))


def unreadable(message: Any) -> str | None:
    """Why a stored pending message cannot be ordered and batched (None: it can). Stage 2 checks what it
    adds; this finds what an older engine or a hand-edited record left."""
    if not isinstance(message, dict):
        return "not an object"
    if not isinstance(message.get("message_id"), str) or not message["message_id"]:
        return "no message_id"
    if not clock.is_stamp(message.get("timestamp")):
        return f"timestamp {message.get('timestamp')!r} is not a time stage 1 writes"
    return None


def readable(pending: list[Any]) -> list[dict[str, Any]]:
    """The pending messages that can be batched: what a flush moves (stage 2 dead-letters the others)."""
    return [m for m in pending if not unreadable(m)]


def outside_window(
    record: dict[str, Any], channel_type: str, messages: Sequence[dict[str, Any]] = ()
) -> bool:
    """WhatsApp only: more than 24 hours since the person's last message (that the record or
    `messages` know of; none known: inside)."""
    if channel_type != "whatsapp":
        return False
    newest = max([record.get("last_inbound_at") or "", *(m.get("timestamp") or "" for m in messages)])
    return bool(newest) and clock.now() - clock.parse_iso(newest) > WHATSAPP_WINDOW_SECONDS
