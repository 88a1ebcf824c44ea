"""What travels on the queues (docs/design.md §4.5): the SQS records Lambda hands stages 2 and 3, the
batch queues' envelope that stage 1 writes and stage 2 reads, and the AI queue's context.

The envelope's top level holds the engine's own keys only. What the provider sent besides them is kept
under `provider_fields`, never beside them: no provider field, today's or one Twilio adds next year,
can pose as one of ours (a form field `Kind=flush` or `Media=…`). Every reader checks the types of what
it reads, so that a record it cannot read is that record's failure alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import clock
from .channels import CHANNELS
from .conversation import HISTORY_FIELDS, structured
from .json_body import json_object

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 1: the provider's fields spread at the top level (read during a rolling deploy)
MESSAGE, FLUSH = "message", "flush"  # a person's message; debounce's "look at the pending messages now"

# A message's keys, each with its JSON type: set by stage 1 from what the provider sent, and by no one else.
MESSAGE_KEYS: dict[str, type] = {
    "channel_type": str,
    "message_sid": str,  # Twilio's MessageSid
    "message_id": str,  # an email's Message-ID
    "account_sid": str,
    "received_at": str,  # stage 1's clock: the ordering key
    "from": str,
    "to": str,
    "body": str,
    "subject": str,
    "raw_text": str,
    "email_message_id": str,  # an email's RFC 5322 Message-ID (threading; `message_id` may be synthetic)
    "references": list,  # an email's References chain, its ids as strings
    "reply_to": str,
    "cc": str,
    "media": list,
    "attachments": list,
    "location": dict,
    "button": dict,
    "in_reply_to": str,
    "referral": dict,
    "forwarded": bool,
    "provider_fields": dict,
}
# Never taken from a conversation record into an envelope: the engine's keys win.
RESERVED = frozenset({*MESSAGE_KEYS, "schema_version", "kind"})


class Unreadable(ValueError):
    """A queue record that no stage could have sent: `str(exc)` says why. It fails alone."""

    def __init__(self, reason: str, message_id: str | None = None) -> None:
        super().__init__(reason)
        self.message_id = message_id


@dataclass(frozen=True)
class SqsRecord:
    """One record of an SQS event, its shape checked."""

    message_id: str
    body: str
    receipt_handle: str | None
    retry_attempt: int  # the engine's own `RetryAttempt` attribute (contention requeues)
    receive_count: int  # SQS's ApproximateReceiveCount

    @classmethod
    def read(cls, raw: Any) -> SqsRecord:
        if not isinstance(raw, dict) or not isinstance(raw.get("messageId"), str) or not raw["messageId"]:
            raise Unreadable("not an SQS record: no messageId")
        message_id = raw["messageId"]
        body, handle = raw.get("body"), raw.get("receiptHandle")
        if not isinstance(body, str):
            raise Unreadable("the record has no body", message_id)
        attributes = _mapping(raw, "messageAttributes", message_id)
        retry = _mapping(attributes, "RetryAttempt", message_id).get("stringValue") or "0"
        receives = _mapping(raw, "attributes", message_id).get("ApproximateReceiveCount") or "1"
        try:
            retry_attempt, receive_count = int(retry), int(receives)
        except (TypeError, ValueError, OverflowError):  # OverflowError: a float infinity
            raise Unreadable(
                f"RetryAttempt {retry!r} or the receive count is not a number", message_id
            ) from None
        if retry_attempt < 0:
            raise Unreadable(f"RetryAttempt {retry_attempt} is negative", message_id)
        return cls(
            message_id, body, handle if isinstance(handle, str) else None, retry_attempt, receive_count
        )


def _mapping(parent: dict[str, Any], name: str, message_id: str) -> dict[str, Any]:
    value = parent.get(name) or {}
    if not isinstance(value, dict):
        raise Unreadable(f"{name} is not an object", message_id)
    return value


def records(
    event: Any, read_body: Callable[[str], dict[str, Any]]
) -> Iterator[tuple[SqsRecord, dict[str, Any]] | Unreadable]:
    """Each record of an SQS event with its body read by `read_body`, or why it cannot be read (its
    `message_id` set when the record has one: then it alone is reported failed)."""
    raws = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(raws, list):
        yield Unreadable("not an SQS event: no Records list")
        return
    for raw in raws:
        message_id = None
        try:
            sqs = SqsRecord.read(raw)
            message_id = sqs.message_id
            yield sqs, read_body(sqs.body)
        except Unreadable as exc:
            exc.message_id = exc.message_id or message_id
            yield exc


def each_record(
    event: Any,
    read_body: Callable[[str], dict[str, Any]],
    stage: str,
    metrics: Any,
    handle: Callable[[dict[str, Any]], bool],
    retry: Callable[[SqsRecord], None] | None = None,
) -> dict[str, Any]:
    """Each record of an SQS event handled on its own (`handle` True: done) → the partial-batch answer:
    what cannot be read, raises or is not done is reported failed, for SQS to retry (`retry`, if given,
    may make that sooner)."""
    failed: list[str] = []
    for read in records(event, read_body):
        if isinstance(read, Unreadable):
            failed += failure(read, stage, metrics)
            continue
        record, body = read
        try:
            done = handle(body)
        except Exception:
            logger.exception(
                f"{stage} record failed; it will be retried", extra={"sqs_message_id": record.message_id}
            )
            done = False
        if not done:
            failed.append(record.message_id)
            if retry is not None:
                retry(record)
    return batch_failures(failed)


def batch_failures(message_ids: list[str]) -> dict[str, Any]:
    """The answer to an SQS event that names the records SQS is to hand out again."""
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in message_ids]}


def failure(exc: Unreadable, stage: str, metrics: Any) -> list[str]:
    """Log an unreadable record once, without its body (it may hold what a person wrote), and count it
    (`UnreadableRecord` by `stage`); the ids to report failed: SQS retries the record, then its redrive
    policy dead-letters it. A record without an id was not sent by SQS: nothing can be reported for it."""
    logger.error(
        "unreadable queue record",
        extra={"stage": stage, "sqs_message_id": exc.message_id, "reason": str(exc)},
    )
    metrics.add("UnreadableRecord", stage=stage)
    return [exc.message_id] if exc.message_id else []


# --- the batch queues --------------------------------------------------------------------------------------


def for_conversation(message: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The envelope of `message` (stage 1's keys) for the conversation `record`: the record's fields
    (design: a downstream reader finds the conversation in it), its history left out, then the message's."""
    kept = {k: v for k, v in record.items() if k not in RESERVED and k not in HISTORY_FIELDS}
    return {**kept, "schema_version": SCHEMA_VERSION, "kind": MESSAGE, **message}


def flush_token(conversation_id: str, channel_type: str) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": FLUSH,
        "conversation_id": conversation_id,
        "channel_type": channel_type,
    }


def read(body: str) -> dict[str, Any]:
    """The envelope in a batch queue's `body`, its engine keys checked, the record's fields dropped: what
    stage 2 may rely on. Unreadable with the reason otherwise."""
    envelope = _object(body)
    version = envelope.get("schema_version", 1)
    if version == 1:
        envelope = _from_version_1(envelope)
    elif version != SCHEMA_VERSION:
        raise Unreadable(f"schema_version {version!r} is not one this engine reads (1, {SCHEMA_VERSION})")
    conversation_id, channel_type, kind = (
        envelope.get(k) for k in ("conversation_id", "channel_type", "kind")
    )
    if not isinstance(conversation_id, str) or not conversation_id:
        raise Unreadable("no conversation_id")
    if not isinstance(channel_type, str) or channel_type not in CHANNELS:
        raise Unreadable(f"channel_type {channel_type!r} is not a channel")
    if kind == FLUSH:
        return flush_token(conversation_id, channel_type)
    if kind != MESSAGE:
        raise Unreadable(f"kind {kind!r} is neither {MESSAGE!r} nor {FLUSH!r}")
    message = {k: envelope[k] for k in MESSAGE_KEYS if envelope.get(k) is not None}
    wrong = [k for k, v in message.items() if not isinstance(v, MESSAGE_KEYS[k])]
    if wrong:
        raise Unreadable(f"wrong JSON type for {', '.join(wrong)}")
    if not (message.get("message_sid") or message.get("message_id")):
        raise Unreadable("no message id (message_sid or message_id)")
    if not clock.is_stamp(message.get("received_at")):
        raise Unreadable(f"received_at {message.get('received_at')!r} is not a time stage 1 writes")
    if not all(
        isinstance(i, dict)
        and isinstance(i.get("url", ""), str)
        and isinstance(i.get("content_type", ""), str)
        for i in message.get("media", [])
    ):
        raise Unreadable("a media item is not {url, content_type}")
    if not all(isinstance(a, dict) for a in message.get("attachments", [])):
        raise Unreadable("an attachment is not an object")
    if not all(isinstance(r, str) for r in message.get("references", [])):
        raise Unreadable("a reference is not a string")
    return {"schema_version": SCHEMA_VERSION, "kind": MESSAGE, "conversation_id": conversation_id, **message}


def _from_version_1(body: dict[str, Any]) -> dict[str, Any]:
    """Version 1 spread the provider's fields beside the engine's keys: its flush token is the body
    with `kind: flush` and no message id; a `media` that is not a list was a provider's field."""
    if body.get("kind") == FLUSH and not (body.get("message_sid") or body.get("message_id")):
        return body
    taken = {k: v for k, v in body.items() if k in MESSAGE_KEYS and isinstance(v, MESSAGE_KEYS[k])}
    if not isinstance(body.get("media"), list):
        taken.pop("media", None)
    return {**taken, **structured(body), "conversation_id": body.get("conversation_id"), "kind": MESSAGE}


def _object(body: str) -> dict[str, Any]:
    try:
        return json_object(body)
    except ValueError as exc:
        raise Unreadable(str(exc)) from None


# --- the AI queue -----------------------------------------------------------------------------------------

_CONTEXT_KEYS: dict[str, type] = {
    "conversation_id": str,
    "batch_id": str,
    "channel_type": str,
    "messages": list,
    "history": list,
    "conversation": dict,
    "reply_address": dict,
}


def read_handoff(body: str) -> dict[str, Any]:
    """A handoff queue item (a person's message for a human, a hand-off notice, an AI context that a
    human takes): an object naming its conversation."""
    item = _object(body)
    if not isinstance(item.get("conversation_id"), str) or not item["conversation_id"]:
        raise Unreadable("no conversation_id")
    return item


def read_ai_context(body: str) -> dict[str, Any]:
    """The AI queue's context (stage 2's `build_ai_context`), its shape checked."""
    context = _object(body)
    wrong = [k for k, kind in _CONTEXT_KEYS.items() if not isinstance(context.get(k), kind)]
    if wrong:
        raise Unreadable(f"missing or of the wrong JSON type: {', '.join(wrong)}")
    if not context["messages"] or not all(
        isinstance(m, dict) for m in context["messages"] + context["history"]
    ):
        raise Unreadable("messages must be a non-empty list of objects")
    if not isinstance(context.get("regenerations", 0), int):
        raise Unreadable("regenerations is not a number")
    held = context.get("held_answer")
    if held is not None and not (isinstance(held, dict) and isinstance(held.get("text"), str)):
        raise Unreadable("held_answer is not an object with a text")
    if not isinstance(context.get("discarded_usage", {}), dict):
        raise Unreadable("discarded_usage is not an object")
    if context["channel_type"] not in CHANNELS or not context["conversation_id"] or not context["batch_id"]:
        raise Unreadable("an unknown channel_type, or an empty conversation_id or batch_id")
    return context
