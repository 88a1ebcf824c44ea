"""What each conditional store write decides, written once for both stores.

A store reads the record (and which of the messages its history holds already), calls the decision
here, and writes what it returns, conditioned on what the decision rested on: SQLite inside one
`BEGIN IMMEDIATE` transaction, DynamoDB with a condition expression that cancels the write if the
record changed, after which it reads and decides again. Nothing here touches a backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import clock
from .conversation import (
    PROCESSING_ERROR,
    PROCESSING_REPLY,
    PROCESSING_TIMEOUT,
    delivery_moves,
    holds,
    in_order,
    is_locked,
    readable,
)
from .ports import LockOutcome, Record, StoreError

# One conditional write takes the lock and stores a batch's messages: DynamoDB's transaction holds 100
# items (the record's and 99 messages'), and both backends batch alike; the rest wait for the next batch.
MAX_MESSAGES_PER_BATCH = 99

# What an unlock removes from the record (the AWS store adds its index key).
LOCK_FIELDS = ("lock_owner", "sending")


@dataclass(frozen=True)
class Write:
    """A decided write: its outcome (`LockOutcome.status`), the record's fields to set and the messages
    to append to its history; `status` alone when nothing is to be written."""

    status: str
    changes: Record = field(default_factory=dict)
    append: list[Record] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    lock_owner: str | None = None

    @property
    def writes(self) -> bool:
        return bool(self.changes)

    def outcome(self, record: Record | None = None) -> LockOutcome:
        """The port's answer, with `record` the record after the write (when the caller wants it)."""
        return LockOutcome(
            self.status,
            record=record,
            appended=self.append if self.status in ("acquired", "added") else [],
            duplicates=self.duplicates,
            lock_owner=self.lock_owner,
        )


def lock(
    record: Record,
    stored: list[Record],
    batch_id: str,
    messages: list[Record],
    *,
    now: float,
    lock_timeout_seconds: float,
) -> Write:
    """Delay mode's batch: take the lock and append those of `messages` not in `stored` (the history's)."""
    if record.get("erased_at"):
        return Write("erased")
    fresh, duplicates = split_duplicates(stored, messages)
    if not fresh:
        return Write("duplicates", duplicates=duplicates)
    if is_locked(record, now, lock_timeout_seconds):
        return Write("locked", duplicates=duplicates, lock_owner=record.get("lock_owner"))
    _check_size(fresh)
    return Write("acquired", lock_fields(record, batch_id, fresh, now), fresh, duplicates)


def add_pending(record: Record, stored: list[Record], messages: list[Record], *, now: float) -> Write:
    """Debounce's arrival: those of `messages` neither pending nor in `stored` join `pending_messages`."""
    if record.get("erased_at"):
        return Write("erased")
    pending = record.get("pending_messages", [])
    fresh, duplicates = split_duplicates([*pending, *stored], messages)
    if not fresh:
        return Write("duplicates", duplicates=duplicates)
    _check_size(fresh)
    changes = {
        "pending_messages": [*pending, *fresh],
        "pending_version": record.get("pending_version", 0) + 1,
        "updated_at": clock.iso(now),
    }
    return Write("added", changes, fresh, duplicates)


def flush(
    record: Record,
    stored: list[Record],
    batch_id: str,
    *,
    pending_version: int,
    now: float,
    lock_timeout_seconds: float,
    held: bool,
) -> Write:
    """Debounce's batch: move the pending messages (at most MAX_MESSAGES_PER_BATCH, in arrival order)
    into the history under the lock, if `pending_version` is still the record's. The lock must be free,
    or, `held`, already `batch_id`'s (the reply stage takes in what came while it worked). Pending
    messages already in `stored` are dropped; the write happens then too."""
    if record.get("erased_at"):
        return Write("erased")
    if record.get("pending_version", 0) != pending_version:
        return Write("changed")
    if (held and not holds(record, batch_id)) or (not held and is_locked(record, now, lock_timeout_seconds)):
        return Write("locked", lock_owner=record.get("lock_owner"))
    candidates = [{**m, "batch_id": batch_id} for m in in_order(readable(record.get("pending_messages", [])))]
    fresh, duplicates = split_duplicates(stored, candidates)
    moved, rest = fresh[:MAX_MESSAGES_PER_BATCH], fresh[MAX_MESSAGES_PER_BATCH:]
    changes = {
        "pending_messages": [{**m, "batch_id": None} for m in rest],
        "pending_version": pending_version + 1,
    }
    if not moved:
        return Write("duplicates", changes, duplicates=duplicates)
    return Write("acquired", {**changes, **lock_fields(record, batch_id, moved, now)}, moved, duplicates)


# What a conversation record keeps when its person's data is erased: its id, the company's side, its
# project and state; numbers (counters, versions). Any other field may name or quote the person.
TOMBSTONE_FIELDS = frozenset(
    {
        "conversation_id",
        "created_at",
        "updated_at",
        "project_id",
        "gsi_company_whatsapp_number",
        "gsi_company_sms_number",
        "gsi_company_email",
        "task_complete",
        "project_status",
        "allowed_channels",
        "conversation_status",
        "erased_at",
    }
)


def tombstone(record: Record, now: float) -> Record:
    """The record once its person's data is erased: `erased_at`, no address, no name, no words; the
    conversation id stays valid for the company's own systems. Nothing is appended to it any more."""
    kept = {
        k: v
        for k, v in record.items()
        if k in TOMBSTONE_FIELDS or (isinstance(v, int | float) and k not in LOCK_FIELDS)
    }
    return {**kept, "erased_at": record.get("erased_at") or clock.iso(now)}


def lock_fields(record: Record, batch_id: str, fresh: list[Record], now: float) -> Record:
    """What taking the lock sets on `record` (besides appending `fresh` to its history)."""
    stamp = clock.iso(now)
    newest = max(m.get("timestamp") or stamp for m in fresh)
    return {
        "conversation_status": PROCESSING_REPLY,
        "lock_owner": batch_id,
        "processing_started_at": stamp,
        "last_user_message_at": newest,
        **inbound_changes(record, {"last_inbound_at": newest}),
        "last_batch_id": batch_id,
        "updated_at": stamp,
        "redrives": 0,
        "sending": {},
    }


def release(status: str, now: float, changes: Record | None = None) -> Record:
    """The lock's holder lets go (LOCK_FIELDS removed besides): `status` and the holder's `changes`."""
    stamp = clock.iso(now)
    return {
        **(changes or {}),
        "conversation_status": status,
        "processing_completed_at": stamp,
        "updated_at": stamp,
    }


def emergency_unlock(
    record: Record, batch: list[Record], *, reason: str, now: float, to_pending: bool
) -> Record:
    """The holder failed after the lock (LOCK_FIELDS removed besides; `batch`, its messages, leave the
    history). `to_pending` (debounce): they go back where they waited, first, for the next flush."""
    changes: Record = {
        "conversation_status": PROCESSING_ERROR,
        "last_error": reason,
        "updated_at": clock.iso(now),
    }
    if to_pending:
        changes["pending_messages"] = [
            *({**m, "batch_id": None} for m in batch),
            *record.get("pending_messages", []),
        ]
        changes["pending_version"] = record.get("pending_version", 0) + 1
    return changes


def reset_stalled(now: float) -> Record:
    """The sweeper frees a lock whose holder stopped (LOCK_FIELDS removed besides)."""
    return {"conversation_status": PROCESSING_TIMEOUT, "updated_at": clock.iso(now)}


def renew(now: float, changes: Record | None = None) -> Record:
    """The holder extends its lease (and notes `changes`, e.g. what it is sending)."""
    stamp = clock.iso(now)
    return {**(changes or {}), "processing_started_at": stamp, "updated_at": stamp}


def refuse(record: Record, message: Record) -> Record | None:
    """A refused message noted once: the record's new `refused_messages`, or None when it is there (or
    the person's data was erased: nothing of theirs is written back)."""
    if record.get("erased_at"):
        return None
    refused = record.get("refused_messages", [])
    if any(m.get("message_id") == message["message_id"] for m in refused):
        return None
    return {"refused_messages": [*refused, message]}


def claim(record: Record, operator: str, *, take_over: bool, now: float) -> Record | None:
    """An operator claims the conversation (nobody answers twice): the fields to set, or None when
    another operator holds it and this is not a take-over."""
    holder = record.get("assigned_to")
    if holder and holder != operator and not take_over:
        return None
    return {"assigned_to": operator, "assigned_at": clock.iso(now)}


def delivery(message: Record, status: str, error_code: str | None, now: float) -> Record | None:
    """A status callback's fields on the reply it names, or None when it moves nothing (out of order)."""
    if not delivery_moves(message.get("delivery_status"), status):
        return None
    fields = {"delivery_status": status, "delivery_updated_at": clock.iso(now)}
    if error_code:
        fields["delivery_error_code"] = error_code
    return fields


def indexed(message: Record) -> bool:
    """Is a message written outside a batch (`write_unlocked`) one a status callback can name? An
    operator's reply is; replies written on release always are."""
    return message.get("role") == "agent"


def inbound_changes(record: Record, changes: Record) -> Record:
    """`changes` to `record`, with `last_inbound_at` (WhatsApp's 24-hour window opens there) moving only
    forward, whatever order messages are written in."""
    if "last_inbound_at" not in changes:
        return changes
    return {
        **changes,
        "last_inbound_at": max(changes["last_inbound_at"], record.get("last_inbound_at") or ""),
    }


def split_duplicates(existing: list[Record], messages: list[Record]) -> tuple[list[Record], list[str]]:
    """(messages whose `message_id` is neither in `existing` nor earlier in `messages`, the ids skipped)."""
    present = {m.get("message_id") for m in existing}
    fresh, duplicates = [], []
    for message in messages:
        if message["message_id"] in present:
            duplicates.append(message["message_id"])
        else:
            present.add(message["message_id"])
            fresh.append(message)
    return fresh, duplicates


def _check_size(fresh: list[Record]) -> None:
    if len(fresh) > MAX_MESSAGES_PER_BATCH:
        raise StoreError(f"{len(fresh)} new messages in one batch: at most {MAX_MESSAGES_PER_BATCH}")
