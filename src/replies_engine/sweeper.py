"""The stalled-lock sweeper: a lock whose lease ran out (its holder died) is recovered, and every
message the holder left unanswered is answered.

It reads only locked conversations (the sparse lock index), never the whole table. For each expired
lease, in this order:
- the holder had noted a reply as `sending`: the sender is asked whether the part in flight went out;
  if every part is then accounted for, the reply is recorded and the lock released, never sent twice;
  otherwise the note passes to the new batch below, whose reply stage sends only the parts left;
- the person's messages after the last reply are unanswered: the lock passes to a new batch (fenced
  on the dead holder's id, so its late reply is never sent) and their AI context goes to the AI queue
  (`MessagesRedriven`); after MAX_RETRY_ATTEMPTS re-drives, to the AI queue's DLQ with the reason;
- nothing unanswered: `processing_timeout`, as a plain reset.
"""

from __future__ import annotations

import json
import logging
import uuid

from . import clock
from .batches import build_ai_context, dead_letter_context, flush_if_pending, unanswered
from .channels import AI_QUEUE
from .conversation import AI, PROCESSING_TIMEOUT, lock_age
from .handoff import closing, notify_handoff
from .ports import Record, Runtime
from .sending import complete, recorded_reply, settle

logger = logging.getLogger(__name__)


def sweep(runtime: Runtime) -> dict[str, int]:
    """Recover every stalled lock; returns `{"checked": locked conversations read, "reset": recovered,
    "redriven": unanswered messages sent back to the AI}`, and with MESSAGE_RETENTION_DAYS `"pruned"`:
    the messages and outbox entries past it, deleted."""
    now = clock.now()
    pruned = _prune(runtime, now) if runtime.settings.message_retention_days else None
    locked = runtime.store.list_locked()
    reset = redriven = 0
    for entry in locked:
        age = lock_age(entry, now)
        if age is not None and age <= runtime.settings.lock_timeout_seconds:
            continue
        try:
            moved = _recover(runtime, entry["conversation_id"], entry.get("lock_owner"), now, age)
        except Exception:  # one conversation's failure must not keep the others locked
            logger.exception(
                "recovery failed: the next sweep tries again",
                extra={"conversation_id": entry["conversation_id"]},
            )
            continue
        if moved is not None:
            reset += 1
            redriven += moved
    return {
        "checked": len(locked),
        "reset": reset,
        "redriven": redriven,
        **({"pruned": pruned} if pruned is not None else {}),
    }


def _prune(runtime: Runtime, now: float) -> int:
    """Retention: what people wrote, and was written to them, kept no longer than MESSAGE_RETENTION_DAYS."""
    before = now - runtime.settings.message_retention_days * 86_400
    try:
        pruned = runtime.store.prune_messages(before) + runtime.outbox.prune(before)
    except Exception:  # the locks matter more: the next sweep prunes
        logger.exception("pruning past the retention failed: the next sweep tries again")
        return 0
    if pruned:
        logger.info("deleted past the retention", extra={"deleted": pruned, "before": clock.iso(before)})
    return pruned


def _recover(
    runtime: Runtime, conversation_id: str, owner: str | None, now: float, age: float | None
) -> int | None:
    """Recover one expired lock: how many messages were re-driven, or None when it was not ours to free
    (its holder renewed it or let go meanwhile)."""
    log = {"conversation_id": conversation_id, "batch_id": owner, "lock_age": age}
    record = runtime.store.get(conversation_id)  # the lock index projects only the lock's fields
    if record is None or record.get("lock_owner") != owner:
        return None
    note = settle(runtime, record["sending"]) if record.get("sending") else {}
    if note and complete(note):
        return _record_sent(runtime, record, note, now, log)
    _, waiting = unanswered(runtime, conversation_id)
    runtime.metrics.add("UnansweredAtSweep", len(waiting))
    if not waiting and not note:
        return _reset(runtime, record, now, log)
    if record.get("redrives", 0) >= runtime.settings.max_retry_attempts:
        return _give_up(runtime, record, note, bool(waiting), now, log)
    return _redrive(runtime, record, note, len(waiting), now, log)


def _record_sent(runtime: Runtime, record: Record, note: Record, now: float, log: dict) -> int | None:
    """The holder died after its reply went out: recorded and the lock released, never sent twice."""
    status, changes = closing(note)
    after = runtime.store.release_lock(
        record["conversation_id"],
        log["batch_id"],
        status=status,
        now=now,
        reply=recorded_reply(note),
        changes=changes,
    )
    if after is None:
        return None
    logger.warning("holder died while sending: its reply is recorded, never sent twice", extra=log)
    if note.get("hand_off"):  # the AI's last word went: the hand-off it asked for stands
        notify_handoff(runtime, after, note["hand_off"], AI, note.get("channel_type"))
    flush_if_pending(runtime, after)
    return 0


def _reset(runtime: Runtime, record: Record, now: float, log: dict) -> int | None:
    """Nothing unanswered and nothing in flight: `processing_timeout`."""
    after = runtime.store.reset_stalled(record["conversation_id"], log["batch_id"], now=now)
    if after is None:
        return None
    runtime.metrics.add("LockTimeoutReset")
    logger.warning("stalled lock reset to processing_timeout", extra=log)
    flush_if_pending(runtime, after)
    return 0


def _give_up(
    runtime: Runtime, record: Record, note: Record, waiting: bool, now: float, log: dict
) -> int | None:
    """Re-driven MAX_RETRY_ATTEMPTS times already: the unanswered messages to the AI queue's DLQ, with
    the reason; the parts that went stay in the thread."""
    conversation_id, owner = record["conversation_id"], log["batch_id"]
    reason = f"unanswered after {record.get('redrives', 0)} re-drives"
    dead = build_ai_context(runtime, record, owner) if waiting else None  # read while they wait
    if note.get("parts"):
        after = runtime.store.release_lock(
            conversation_id, owner, status=PROCESSING_TIMEOUT, now=now, reply=recorded_reply(note)
        )
    else:
        after = runtime.store.reset_stalled(conversation_id, owner, now=now)
    if after is None:
        return None
    if dead is not None:
        dead_letter_context(runtime, dead, reason)
    runtime.metrics.add("LockTimeoutReset")
    logger.error("stalled lock reset; its unanswered messages dead-lettered", extra={**log, "reason": reason})
    return 0


def _redrive(
    runtime: Runtime, record: Record, note: Record, waiting: int, now: float, log: dict
) -> int | None:
    """The lock passes to a new batch, fenced on the dead holder's id, and the unanswered messages' AI
    context goes to the AI queue; a note goes with the lock: the new batch sends only what did not go."""
    conversation_id, batch_id = record["conversation_id"], f"batch-{uuid.uuid4().hex}"
    changes = {
        "lock_owner": batch_id,
        "last_batch_id": batch_id,
        "redrives": record.get("redrives", 0) + 1,
        "sending": note,
    }
    held = runtime.store.renew_lock(conversation_id, log["batch_id"], now=now, changes=changes)
    if held is None:
        return None
    try:
        runtime.queue.send(
            AI_QUEUE, json.dumps(build_ai_context(runtime, held, batch_id), ensure_ascii=False)
        )
    except Exception:  # the new lease expires in its turn and the next sweep tries again
        logger.exception("re-drive failed: the next sweep tries again", extra={**log, "batch_id": batch_id})
        return None
    runtime.metrics.add("MessagesRedriven", waiting)
    logger.warning(
        "stalled lock re-driven: its unanswered messages go to the AI again",
        extra={**log, "new_batch_id": batch_id, "messages": waiting},
    )
    return waiting
