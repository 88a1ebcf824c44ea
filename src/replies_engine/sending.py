"""A reply's parts, sent one by one: what the AI's reply (under the lock, `replies/delivery.py`), an
operator's reply (`handoff.py`) and the sweeper share.

A reply is a note: `texts`, its parts as cut by the channel's rules, and `parts`, the provider ids of
those sent. `send_part` sends one and says how it failed, if it did; `settle` finds out whether the part
in flight when its sender stopped went out; `recorded_reply` is the message a note becomes in the thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from . import clock
from .ports import (
    AmbiguousSendError,
    PermanentSendError,
    Runtime,
    TransientBackendError,
    TransientSendError,
)

logger = logging.getLogger(__name__)

_NOTE_ONLY = ("texts", "parts", "unsent", "in_doubt", "conversation_id", "hand_off")

TRANSIENT = "transient"  # it did not go: send it again later
AMBIGUOUS = "ambiguous"  # it may have gone: never sent again without asking the provider first
REFUSED = "refused"  # the provider refused it for good (`error.kind`, `error.code`: why)


@dataclass(frozen=True)
class Unsent:
    """A part that did not surely go: `how` (TRANSIENT, AMBIGUOUS, REFUSED) and the sender's error."""

    how: str
    error: Exception


def send_part(runtime: Runtime, note: dict[str, Any], part: int) -> str | Unsent:
    """Send the note's part `part` by its channel's sender: the provider's id for it, or Unsent."""
    try:
        return runtime.senders[note["channel_type"]].send(note, part)
    except (TransientSendError, TransientBackendError) as exc:
        return Unsent(TRANSIENT, exc)
    except AmbiguousSendError as exc:
        return Unsent(AMBIGUOUS, exc)
    except PermanentSendError as exc:
        return Unsent(REFUSED, exc)


def in_doubt(note: dict[str, Any], part: int) -> str:
    """The id recorded for a part that may have gone: it is never sent again, and no callback names it."""
    return f"unknown-{note['batch_id']}-{part}"


def complete(note: dict[str, Any]) -> bool:
    return len(note["parts"]) >= len(note["texts"])


def in_flight(note: dict[str, Any]) -> bool:
    """May the next part have gone out (a holder stopped while sending it)? Not when its last send
    was refused before it reached the provider (`unsent`, cleared again before the next send)."""
    return not complete(note) and not note.get("unsent")


def settle(runtime: Runtime, note: dict[str, Any]) -> dict[str, Any]:
    """The note, with the part that was in flight when its holder stopped found out: recorded if it
    went, and also if the provider cannot tell (`in_doubt`: it may have reached the person, so it is
    never sent twice); unchanged if it surely did not (the next send puts it in flight again)."""
    note = {"texts": [note.get("content", "")], "parts": [], **note}  # a note from before parts
    if not in_flight(note):
        return note
    part = len(note["parts"])
    went = runtime.senders[note["channel_type"]].went_out(note, part)
    if went is False:
        return note
    runtime.metrics.add("ReplyInDoubt" if went is None else "ReplyRecovered")
    logger.warning(
        "a part in flight when its holder stopped is recorded, never sent twice",
        extra={"batch_id": note["batch_id"], "part": part, "went": went or "unknown"},
    )
    return {
        **note,
        "parts": [*note["parts"], went or in_doubt(note, part)],
        "in_doubt": note.get("in_doubt", False) or went is None,
    }


def recorded_reply(note: dict[str, Any]) -> dict[str, Any]:
    """The assistant message a note becomes: `message_id` its first part's, `parts` when it was split,
    `content` what was sent."""
    reply = {k: v for k, v in note.items() if k not in _NOTE_ONLY}
    sent = note["parts"]
    reply.update(
        message_id=sent[0],
        content="".join(note["texts"][: len(sent)]) if not note.get("template") else note["content"],
        timestamp=clock.iso(),
        delivery_status="unknown" if note.get("in_doubt") else "queued",
    )
    if len(note["texts"]) > 1:
        reply["parts"] = sent
    return reply
