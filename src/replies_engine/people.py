"""A person's data is theirs: everything the engine holds about one address, exported, or erased.

An address is a phone number (`+4915112345678`, `whatsapp:+49…`), a WhatsApp BSUID (`US.1349…`) or an
email address; it finds every conversation whose record names the person (`conversation.PERSON_FIELDS`),
active or not. The command line (`replies-engine people`) and the admins' API use these.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from . import clock
from .channels import QUEUES, bsuid, normalize_email, normalize_phone
from .ports import QueueError, Record, Runtime

_PHONE = re.compile(r"\+?\d{6,15}")


class AddressError(ValueError):
    """Not an address a person can be found by: the message says why."""


def person_field(address: str) -> tuple[str, str]:
    """(the record's field, its value) that finds the person at `address`."""
    if "@" in address:
        return "gsi_recipient_email", normalize_email(address)
    if found := bsuid(address):
        return "recipient_bsuid", found
    number = normalize_phone(address)
    if not _PHONE.fullmatch(number):
        raise AddressError("expected a phone number (+4915112345678), a WhatsApp BSUID or an email address")
    return "gsi_recipient_tel", number if number.startswith("+") else f"+{number}"  # WaId: no "+"


def conversations(runtime: Runtime, address: str) -> list[Record]:
    return runtime.store.find_person(*person_field(address))


def export(runtime: Runtime, address: str) -> dict[str, Any]:
    """Everything held about the person: each conversation record that names them with its messages
    (transcripts, media descriptions, replies, delivery statuses and events in them), and what the
    queues, their dead-letter queues and the outbox hold for those conversations (None where the
    backend cannot tell: SQS cannot be read without taking the messages)."""
    found = conversations(runtime, address)
    ids = {record["conversation_id"] for record in found}
    return {
        "address": address,
        "exported_at": clock.iso(),
        "conversations": [{**r, "messages": runtime.store.messages(r["conversation_id"])} for r in found],
        "queued": _queued(runtime, ids),
        "outbox": _outbox(runtime, ids),
    }


def erase(runtime: Runtime, address: str, *, dry_run: bool = False) -> dict[str, Any]:
    """Erase the person's data from every conversation that names them (`ConversationStore.erase`):
    counts of what went (`--dry-run`: of what would). Run again, it finds nothing left; after a crash,
    it finishes what the crashed run began."""
    if dry_run:  # what an export would show, counted
        held = export(runtime, address)
        return {
            "dry_run": True,
            "conversations": len(held["conversations"]),
            "messages": sum(len(c["messages"]) for c in held["conversations"]),
            **{k: None if held[k] is None else len(held[k]) for k in ("queued", "outbox")},
        }
    found = conversations(runtime, address)
    totals: Counter[str] = Counter()
    for record in found:
        totals.update(runtime.store.erase(record["conversation_id"], now=clock.now()))
    if found:
        runtime.metrics.add("PersonErased")
    return {"conversations": len(found), "messages": 0, "queued": 0, "outbox": 0, **totals}


def _queued(runtime: Runtime, ids: set[str]) -> list[dict[str, Any]] | None:
    found = []
    try:
        for queue in [*QUEUES, *(f"{q}-dlq" for q in QUEUES)]:
            for message in runtime.queue.peek(queue):
                body = _json(message.body)
                if body.get("conversation_id") in ids:
                    found.append({"queue": queue, "body": body})
    except QueueError:
        return None
    return found


def _outbox(runtime: Runtime, ids: set[str]) -> list[Record] | None:
    try:
        return [entry for entry in runtime.outbox.list() if entry.get("conversation_id") in ids]
    except QueueError:
        return None


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
