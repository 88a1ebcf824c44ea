"""The inbox API's work: what each request does, for the operator it is from (`app.py` routes them,
checks who asks and maps the errors)."""

from __future__ import annotations

import logging
import statistics
from functools import partial
from typing import Any
from urllib.parse import unquote

from .. import clock, operators, people
from .. import handoff as handoff_
from ..channels import QUEUES
from ..conversation import AI, HUMAN, WHATSAPP_WINDOW_SECONDS, owned_by_human
from ..handoff import OperatorError, hand_back, hand_off, human_reply
from ..handoff import conversation as record_of
from ..operators import Operator
from ..ports import QueueError, Runtime

logger = logging.getLogger(__name__)


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


_RECENT = 20  # the messages a row reads: enough to find what waits since the last answer


def conversations(
    runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str]
) -> dict[str, Any]:
    """The list, longest waiting first; `owner` (human, ai) and `status` filter it, `q` finds a person by
    name, number, email address or the words of the thread's newest messages."""
    owner, status, words = query.get("owner"), query.get("status"), (query.get("q") or "").strip().lower()
    if owner not in (None, AI, HUMAN):
        raise OperatorError(400, "owner is human or ai")
    rows = []
    for record in runtime.store.list(status):
        is_human = owned_by_human(record, runtime.settings.honor_hand_off_to_human)
        if owner is not None and (owner == HUMAN) != is_human:
            continue
        recent = runtime.store.messages(record["conversation_id"], last=_RECENT)
        if words and words not in _searchable(record, recent):
            continue
        rows.append(summary(record, recent, is_human))
    rows.sort(key=lambda row: -(row["waiting_seconds"] or -1))
    return {"conversations": rows}


def summary(record: dict[str, Any], recent: list[dict[str, Any]], is_human: bool) -> dict[str, Any]:
    """An inbox row: who the person is and on which channel; who answers (the AI, waiting for a human,
    or a human who answered last); and how long the person has waited: since their first message after
    the last answer (a human's, when a human owns it: the AI's hand-off line answers nothing), or since
    the hand-off when that came after it."""
    last = recent[-1] if recent else None
    answers = ("agent",) if is_human else ("agent", "assistant")
    answered = max((i for i, m in enumerate(recent) if m.get("role") in answers), default=-1)
    waiting = [m for m in recent[answered + 1 :] if m.get("role") == "user" and m.get("timestamp")]
    since = waiting[0]["timestamp"] if waiting else None
    handed_off = record.get("handed_off_at") if is_human else None
    if handed_off and (answered < 0 or handed_off > (recent[answered].get("timestamp") or "")):
        since = min(filter(None, [since, handed_off]))
    label = AI
    if is_human:
        label = "waiting_for_human" if since else "agent"
    channel = next((m.get("channel_type") for m in reversed(recent) if m.get("role") == "user"), None)
    return {
        "conversation_id": record["conversation_id"],
        "person": person(record),
        "channel": channel,
        "owner": HUMAN if is_human else AI,
        "label": label,
        "conversation_status": record.get("conversation_status"),
        "opted_out": bool(record.get("opted_out")),
        "handoff_reason": record.get("handoff_reason") if is_human else None,
        "handed_off_by": record.get("handed_off_by") if is_human else None,
        "handed_off_at": handed_off,
        "assigned_to": record.get("assigned_to"),
        "last_message": last,
        "unanswered": len(waiting),
        "waiting_since": since,
        "waiting_seconds": round(clock.now() - clock.parse_iso(since), 1) if since else None,
        "window_closes_at": window_closes_at(record, channel),
    }


def conversation_summary(
    runtime: Runtime, record: dict[str, Any], messages: list[dict[str, Any]]
) -> dict[str, Any]:
    """A thread's header: its row's summary, and whether a template may go once the window closed."""
    is_human = owned_by_human(record, runtime.settings.honor_hand_off_to_human)
    row = summary(record, messages[-_RECENT:], is_human)
    return {**row, "template_available": bool(runtime.settings.whatsapp_template_content_sid)}


def _searchable(record: dict[str, Any], recent: list[dict[str, Any]]) -> str:
    texts = [*person(record).values(), *(m.get("content") for m in recent)]
    return " ".join(t for t in texts if isinstance(t, str)).lower()


def person(record: dict[str, Any]) -> dict[str, Any]:
    """Who the person is, as the record knows them."""
    return {
        "name": record.get("profile_name") or record.get("recipient_username"),
        "phone": record.get("gsi_recipient_tel"),
        "bsuid": record.get("recipient_bsuid"),
        "email": record.get("gsi_recipient_email"),
    }


def window_closes_at(record: dict[str, Any], channel: str | None) -> str | None:
    """WhatsApp: when the 24-hour window for free-form messages closes (after it, only a template)."""
    if channel != "whatsapp" or not record.get("last_inbound_at"):
        return None
    return clock.iso(clock.parse_iso(record["last_inbound_at"]) + WHATSAPP_WINDOW_SECONDS)


def conversation(
    runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str], conversation_id: str
) -> dict[str, Any]:
    """The record, its thread, and its row's summary (`summary`: who, waiting since, the window)."""
    record = record_of(runtime, conversation_id)
    messages = runtime.store.messages(conversation_id)
    return {**record, "messages": messages, "summary": conversation_summary(runtime, record, messages)}


def reply(
    runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str], conversation_id: str
) -> dict[str, Any]:
    message = human_reply(
        runtime,
        conversation_id,
        _text(body, "text"),
        operator.name,
        take_over=_flag(body, "take_over"),
        template=_flag(body, "template"),
    )
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
    firsts: list[float] = []
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
    return {
        **counts,
        "first_reply_median_seconds": round(statistics.median(firsts), 1) if firsts else None,
        "first_reply_p95_seconds": (
            round(statistics.quantiles(firsts, n=20, method="inclusive")[-1], 1) if len(firsts) > 1 else None
        ),
    }


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


# --- a person's data (admins) ---------------------------------------------------------------------


def export_person(
    runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str], address: str
) -> dict[str, Any]:
    address = unquote(address)
    exported = _for_person(people.export, runtime, address)
    logger.info("person exported", extra={"by": operator.name, "address": address})  # masked
    return exported


def erase_person(
    runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str], address: str
) -> dict[str, Any]:
    address, dry_run = unquote(address), query.get("dry_run") in ("1", "true")
    erased = _for_person(partial(people.erase, dry_run=dry_run), runtime, address)
    logger.info("person erased", extra={"by": operator.name, "address": address, **erased})
    return erased


def _for_person(work: Any, runtime: Runtime, address: str) -> dict[str, Any]:
    try:
        result: dict[str, Any] = work(runtime, address)
    except people.AddressError as exc:
        raise OperatorError(400, str(exc)) from None
    return result


# --- the operators' accounts (admins) ------------------------------------------------------------


def accounts(runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str]) -> dict[str, Any]:
    return {"operators": operators.accounts(runtime)}


def add_account(runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str]) -> dict[str, Any]:
    return _account(
        operators.add, runtime, operator, _text(body, "name"), _text(body, "role", operators.AGENT)
    )


def reset_account(
    runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str], name: str
) -> dict[str, Any]:
    return _account(operators.reset, runtime, operator, name)


def remove_account(
    runtime: Runtime, operator: Operator, *, body: dict, query: dict[str, str], name: str
) -> dict[str, Any]:
    return _account(operators.remove, runtime, operator, name)


def _account(change: Any, runtime: Runtime, operator: Operator, *args: str) -> dict[str, Any]:
    """An account change by an admin, logged with who made it (the token it prints goes to them only)."""
    try:
        result: dict[str, Any] = change(runtime, *args)
    except operators.OperatorsError as exc:
        raise OperatorError(exc.status, str(exc)) from None
    logger.info(
        "operator account changed",
        extra={"by": operator.name, "change": change.__name__, "account": result["name"]},
    )
    return result
