"""The inbox API's work: what each request does, for the operator it is from (`app.py` routes them,
checks who asks and maps the errors)."""

from __future__ import annotations

import statistics
from typing import Any

from .. import clock
from .. import handoff as handoff_
from ..channels import QUEUES
from ..conversation import AI, HUMAN, owned_by_human
from ..handoff import OperatorError, hand_back, hand_off, human_reply
from ..handoff import conversation as record_of
from ..operators import Operator
from ..ports import QueueError, Runtime


def me(runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str]) -> dict[str, Any]:
    return {"name": operator.name, "role": operator.role}


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise OperatorError(400, f"{name!r} must be true or false")
    return value


def _text(body: dict[str, Any], name: str, default: str = "") -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise OperatorError(400, f"{name!r} must be a string")
    return value


def conversations(
    runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str]
) -> dict[str, Any]:
    owner, status = query.get("owner"), query.get("status")
    if owner not in (None, AI, HUMAN):
        raise OperatorError(400, "owner is human or ai")
    rows = []
    for record in runtime.store.list(status):
        is_human = owned_by_human(record, runtime.settings.honor_hand_off_to_human)
        if owner is not None and (owner == HUMAN) != is_human:
            continue
        [last] = runtime.store.messages(record["conversation_id"], last=1) or [None]
        rows.append(summary(record, last, is_human))
    rows.sort(key=lambda row: -(row["waiting_seconds"] or -1))
    return {"conversations": rows}


def summary(record: dict[str, Any], last: dict[str, Any] | None, is_human: bool) -> dict[str, Any]:
    """An inbox row: who answers (AI, waiting for a human, or a human who answered last) and how long
    the person has waited (their message is the last one)."""
    waiting = None
    if last and last.get("role") == "user" and last.get("timestamp"):
        waiting = round(clock.now() - clock.parse_iso(last["timestamp"]), 1)
    label = AI
    if is_human:
        label = "agent" if last and last.get("role") == "agent" else "waiting_for_human"
    return {
        "conversation_id": record["conversation_id"],
        "owner": HUMAN if is_human else AI,
        "label": label,
        "conversation_status": record.get("conversation_status"),
        "opted_out": bool(record.get("opted_out")),
        "handoff_reason": record.get("handoff_reason") if is_human else None,
        "assigned_to": record.get("assigned_to"),
        "last_message": last,
        "waiting_seconds": waiting,
    }


def conversation(
    runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str], conversation_id: str
) -> dict[str, Any]:
    return {**record_of(runtime, conversation_id), "messages": runtime.store.messages(conversation_id)}


def reply(
    runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str], conversation_id: str
) -> dict[str, Any]:
    text = _text(body, "text")
    message = human_reply(runtime, conversation_id, text, operator.name, take_over=_flag(body, "take_over"))
    return {"status": "sent", "message": message}


def assign(
    runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str], conversation_id: str
) -> dict[str, Any]:
    record = handoff_.assign(runtime, conversation_id, operator.name, take_over=_flag(body, "take_over"))
    return {"status": "assigned", "assigned_to": record["assigned_to"]}


def handoff(
    runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str], conversation_id: str
) -> dict[str, Any]:
    reason = _text(body, "reason").strip() or "an operator took over"
    record = hand_off(runtime, conversation_id, reason, by=operator.name)
    return {"status": "handed_off", "owner": record.get("owner")}


def handback(
    runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str], conversation_id: str
) -> dict[str, Any]:
    record = hand_back(runtime, conversation_id, by=operator.name)
    return {"status": "handed_back", "owner": record.get("owner")}


def queues(runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str]) -> dict[str, Any]:
    return runtime.queue.stats()


def stats(runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str]) -> dict[str, Any]:
    """What the inbox shows above the list, from the conversations as stored (a read of every
    thread: an operator's tool, not a hot path) and the queues' counts."""
    counts = dict.fromkeys(
        (
            "received",
            "answered_by_ai",
            "answered_by_humans",
            "handed_off_by_rule",
            "handed_off_by_ai",
            "handed_off_by_operators",
            "handed_back",
        ),
        0,
    )
    firsts = []
    for record in runtime.store.list():
        messages = runtime.store.messages(record["conversation_id"])
        roles = [m.get("role") for m in messages]
        counts["received"] += roles.count("user")
        counts["answered_by_ai"] += sum(
            1 for m in messages if m.get("role") == "assistant" and "answers" in m
        )
        counts["answered_by_humans"] += roles.count("agent")
        counts["handed_back"] += sum(1 for m in messages if m.get("event") == "handed_back")
        if record.get("handed_off_at"):
            by = record.get("handed_off_by")
            counts["handed_off_by_" + ("rule" if by == "rule" else "ai" if by == AI else "operators")] += 1
        firsts.extend(_first_reply_seconds(messages))
    queues = runtime.queue.stats()
    counts["dead_lettered"] = sum(sum(q.values()) for name, q in queues.items() if name.endswith("-dlq"))
    counts["superseded"] = int(runtime.metrics.snapshot().get("ReplySuperseded", 0))  # since this serve began
    counts["first_reply_median_seconds"] = round(statistics.median(firsts), 1) if firsts else None
    counts["first_reply_p95_seconds"] = (
        round(statistics.quantiles(firsts, n=20, method="inclusive")[-1], 1) if len(firsts) > 1 else None
    )
    return counts


def _first_reply_seconds(messages: list[dict[str, Any]]) -> list[float]:
    """From the person's first message to the first reply after it (the AI's or a human's)."""
    first = next((m for m in messages if m.get("role") == "user" and m.get("timestamp")), None)
    if first is None:
        return []
    after = messages[messages.index(first) + 1 :]
    reply = next((m for m in after if m.get("role") in ("assistant", "agent") and m.get("timestamp")), None)
    if reply is None:
        return []
    return [max(0.0, clock.parse_iso(reply["timestamp"]) - clock.parse_iso(first["timestamp"]))]


def _dead_letter_queue(name: str) -> str:
    if name not in QUEUES:
        raise OperatorError(404, f"no queue {name!r}: one of {', '.join(QUEUES)}")
    return f"{name}-dlq"


def dead_letters(
    runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str], name: str
) -> dict[str, Any]:
    try:
        held = runtime.queue.peek(_dead_letter_queue(name))
    except QueueError as exc:  # SQS cannot show a message without receiving it
        raise OperatorError(501, str(exc)) from exc
    return {
        "messages": [
            {"message_id": m.message_id, "body": m.body, "attributes": m.attributes, "sent_at": m.sent_at}
            for m in held
        ]
    }


def redrive(
    runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str], name: str
) -> dict[str, Any]:
    _dead_letter_queue(name)
    return {"redriven": runtime.queue.redrive(name)}
