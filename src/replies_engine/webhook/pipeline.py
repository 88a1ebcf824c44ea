"""Stage 1: parse → verify → find conversation → keywords → rules → route → enqueue → respond
(docs/design.md §1). The same handler records Twilio's delivery status callbacks (`POST /twilio/status`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .. import clock
from ..channels import EMAIL, HANDOFF_QUEUE, TWILIO
from ..config import ConfigurationError, Settings
from ..conversation import (
    DELIVERY_FINAL,
    DELIVERY_ORDER,
    HUMAN,
    flag,
    identity,
    message_key,
    owned_by_human,
    user_message,
)
from ..envelope import for_conversation
from ..handoff import TIMEOUT, hand_back, handoff_changes, handoff_reply_text, human_silent_too_long
from ..ports import BackendError, QueueError, Runtime, TransientBackendError, TransientQueueError
from .email_providers import verify_mailgun
from .keywords import HELP, START, STOP, keyword
from .parsing import (
    InboundRequest,
    ParsingError,
    build_context_object,
    channel_from_event,
    is_alb,
    parse_event,
)
from .responses import ERROR_STATUS, final_response, for_alb, json_response, success_response
from .routing import determine_target_queue
from .signature import shared_key, verify_email, verify_twilio
from .validation import check_conversation_exists, validate_conversation_rules

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    error_code: str | None = None  # None: accepted
    message: str = ""
    queue_message_id: str = ""
    log: dict[str, Any] = field(default_factory=dict)  # correlation fields known so far
    reply_text: str | None = None  # answered at once, in the TwiML (HELP, a rule's hand-off)
    answer: dict[str, Any] | None = None  # the JSON answer to a status callback


def handle_webhook(event: dict[str, Any], runtime_of: Callable[[], Runtime]) -> dict[str, Any]:
    """Answer one webhook request; raises TransientWebhookError only to make Twilio retry. `runtime_of`
    builds the runtime on first use: a configuration error is answered as one (Twilio: 200 TwiML)."""
    answer = _answer(event, runtime_of)
    return for_alb(answer) if is_alb(event) else answer


def _answer(event: dict[str, Any], runtime_of: Callable[[], Runtime]) -> dict[str, Any]:
    channel = channel_from_event(event) if isinstance(event, dict) else None
    runtime: Runtime | None = None
    try:
        runtime = runtime_of()
        outcome = _accept(event, runtime)
    except ConfigurationError as exc:
        outcome = Outcome("CONFIGURATION_ERROR", str(exc))
    except Exception:  # the safety net: a bug must not make Twilio retry forever
        logger.exception("unexpected error in the webhook handler")
        outcome = Outcome("INTERNAL_ERROR", "unexpected error")
    extra = {"channel_type": channel.name if channel else None, **outcome.log}
    if outcome.answer is not None:
        logger.info("status callback", extra={**extra, **outcome.answer})
        return json_response(200, outcome.answer)
    if outcome.error_code is None:
        logger.info("message accepted", extra={**extra, "queue_message_id": outcome.queue_message_id})
        return success_response(channel, outcome.queue_message_id, outcome.reply_text)
    level = logging.ERROR if ERROR_STATUS.get(outcome.error_code, 500) >= 500 else logging.WARNING
    logger.log(
        level, "message refused", extra={**extra, "error_code": outcome.error_code, "reason": outcome.message}
    )
    if runtime is not None:
        runtime.metrics.add("WebhookRefused", error_code=outcome.error_code)
    locked_text = runtime.settings.locked_reply_text if runtime else ""
    return final_response(channel, outcome.error_code, outcome.message, locked_text)


def _accept(event: dict[str, Any], runtime: Runtime) -> Outcome:
    """Steps 1 and 2: read the request and verify it; then `admit` it."""
    try:
        request = parse_event(event)
        message = build_context_object(request) if request.channel is not None else {}
    except ParsingError as exc:
        return Outcome("PARSING_ERROR", str(exc))
    if request.channel is None:
        return _verify(request, runtime) or _record_delivery_status(request, runtime)
    log = {"message_sid": message_key(message)}
    logger.info("webhook received", extra={**log, "channel_type": request.channel.name})

    refusal = _verify(request, runtime)
    if refusal is not None:
        refusal.log = log
        return refusal
    return admit(request, message, runtime, log)


def admit(
    request: InboundRequest, message: dict[str, Any], runtime: Runtime, log: dict, withheld: str | None = None
) -> Outcome:
    """Steps 3 to 6 for a message read and verified, whatever door it came through: its conversation,
    the rules, the route. `withheld` (why): the message is recorded in its conversation for a human
    to see, never answered (a mail SES judged spam)."""
    found = check_conversation_exists(message, runtime.store)
    if not found["valid"]:
        return Outcome(found["error_code"], found["message"], log=log)
    log["conversation_id"] = found["record"].get("conversation_id")
    if withheld:
        recorded = {**user_message(found["data"]), "no_reply": withheld}
        written = _write(runtime, found["data"], log, {}, recorded)
        return written if isinstance(written, Outcome) else Outcome(log={**log, "no_reply": withheld})
    kept = _rules(request, message, found, runtime, log)
    return kept if isinstance(kept, Outcome) else _route(message, kept, runtime, log)


def _rules(
    request: InboundRequest, message: dict[str, Any], found: dict[str, Any], runtime: Runtime, log: dict
) -> dict[str, Any] | Outcome:
    """Steps 3 and 4: the opt-out keywords, then the conversation's rules. The envelope to route (with
    what WhatsApp told of who wrote, learned), or the Outcome that ends here."""
    settings = runtime.settings
    context_object = found["data"]  # the envelope: the record's fields, then the message's
    if request.provider.keywords:
        handled = _opt_out_rules(context_object, runtime, log)
        if handled is not None:
            return handled
    rules = validate_conversation_rules(context_object, settings.lock_timeout_seconds)
    if not rules["valid"]:
        if rules["error_code"] != "CONVERSATION_LOCKED":
            return Outcome(rules["error_code"], rules["message"], log=log)
        # debounce: a locked conversation keeps collecting; a human's takes every message for them
        if settings.batching.reply_when_locked and not owned_by_human(
            context_object, settings.honor_hand_off_to_human
        ):
            return _record_refused(context_object, rules["message"], runtime, log)
        logger.info("conversation locked: message kept for the next batch", extra=log)
    learned = {k: v for k, v in identity(message).items() if found["record"].get(k) != v}
    if learned:  # kept, so that a later message that names them by username alone still finds them
        written = _write(runtime, context_object, log, learned, None)
        if isinstance(written, Outcome):
            return written
        context_object = {**context_object, **learned}
    return context_object


def _route(message: dict[str, Any], context_object: dict[str, Any], runtime: Runtime, log: dict) -> Outcome:
    """Steps 5 and 6: a human silent too long hands back; then to a human or to the channel's batch queue."""
    settings = runtime.settings
    if human_silent_too_long(context_object, settings.handoff_auto_return_hours):
        # checked when the person writes again: no scan of the table for silent humans
        record = _stored(
            "hand the conversation back",
            log,
            partial(hand_back, runtime, context_object["conversation_id"], by=TIMEOUT),
        )
        if isinstance(record, Outcome):
            return record
        context_object = for_conversation(message, {**context_object, **record})
    queue = determine_target_queue(context_object, settings.honor_hand_off_to_human)
    if queue is None or not runtime.queue.has_queue(queue):
        return Outcome(
            "ROUTING_ERROR", f"no queue for channel {context_object.get('channel_type')!r}", log=log
        )
    told = None
    if queue == HANDOFF_QUEUE:
        handed_now = context_object.get("owner") != HUMAN
        written = _for_a_human(context_object, runtime, log)
        if isinstance(written, Outcome):
            return written
        if not written:  # Twilio's retry of a message already with a human: it was queued then
            return Outcome(log={**log, "duplicate": True})
        if handed_now:  # the person is told at once, in Twilio's answer, that a human will write
            told = handoff_reply_text(runtime, context_object)
    try:
        queue_message_id = runtime.queue.send(
            queue,
            json.dumps(context_object, ensure_ascii=False),
            delay_seconds=0 if queue == HANDOFF_QUEUE else settings.batching.enqueue_delay,
            attributes={"conversation_id": context_object["conversation_id"], "RetryAttempt": 0},
        )
    except TransientQueueError as exc:
        return Outcome("QUEUE_TRANSIENT_ERROR", str(exc), log=log)
    except QueueError as exc:
        return Outcome("QUEUE_ERROR", str(exc), log=log)
    runtime.metrics.add("MessagesReceived", channel_type=context_object["channel_type"])
    return Outcome(queue_message_id=queue_message_id, log={**log, "queue": queue}, reply_text=told)


def _opt_out_rules(context_object: dict[str, Any], runtime: Runtime, log: dict) -> Outcome | None:
    """STOP, START, HELP, and the messages of a person who opted out (SMS, WhatsApp). None: the message
    goes on as any other (START too, once it cleared `opted_out`). Otherwise it is recorded in the
    conversation here, never to be answered by the AI (`no_reply`), and Twilio gets its answer."""
    kind = keyword(context_object)
    opted_out = flag(context_object.get("opted_out"))
    now = context_object["received_at"]
    changes: dict[str, Any] = {"last_inbound_at": now}
    reply_text = None
    if kind == STOP:
        changes.update(opted_out=True, **({} if opted_out else {"opted_out_at": now}))
        no_reply = STOP
    elif kind == START:
        written = _write(runtime, context_object, log, {"opted_out": False}, None) if opted_out else True
        return written if isinstance(written, Outcome) else None
    elif opted_out:
        no_reply = "opted_out"  # nothing is sent to them, HELP's answer included
    elif kind == HELP and runtime.settings.help_reply_text:
        no_reply, reply_text = HELP, runtime.settings.help_reply_text
    else:
        return None
    message = {**user_message(context_object), "no_reply": no_reply}
    written = _write(runtime, context_object, log, changes, message)
    if isinstance(written, Outcome):
        return written
    if written:  # not for a retry of the same message
        runtime.metrics.add(
            "KeywordReceived" if kind else "OptedOutMessage", channel_type=context_object["channel_type"]
        )
    logger.info("recorded, not for the AI", extra={**log, "no_reply": no_reply})
    return Outcome(log=log, reply_text=reply_text)


def _for_a_human(context_object: dict[str, Any], runtime: Runtime, log: dict) -> Outcome | bool:
    """A human answers: the message is recorded in the thread for them (never for the AI), and the
    rule that routed it makes a human the owner. Whether it was written (False: it was there), or an
    error Outcome."""
    now = context_object["received_at"]
    changes: dict[str, Any] = {"last_inbound_at": now}
    handed_now = context_object.get("owner") != HUMAN
    if handed_now:
        changes.update(handoff_changes("a routing rule", "rule", now))
    written = _write(
        runtime, context_object, log, changes, {**user_message(context_object), "no_reply": HUMAN}
    )
    if written is True and handed_now:
        runtime.metrics.add("HandedOff", cause="rule")
    return written


def _write(
    runtime: Runtime, context_object: dict[str, Any], log: dict, changes: dict[str, Any], message: dict | None
) -> Outcome | bool:
    """Stage 1's own write to the conversation: whether it wrote (False: the message was there), or an
    error Outcome."""
    write = partial(
        runtime.store.write_unlocked, context_object["conversation_id"], changes=changes, message=message
    )
    return _stored("record the message", log, write)


def _stored(what: str, log: dict, call: Callable[[], Any]) -> Any:
    """`call()`'s result, or the Outcome its backend's failure is: transient (Twilio retries) or not."""
    try:
        return call()
    except TransientBackendError as exc:
        return Outcome("DB_TRANSIENT_ERROR", f"cannot {what}: {exc}", log=log)
    except BackendError as exc:
        return Outcome("DB_QUERY_ERROR", f"cannot {what}: {exc}", log=log)


_DELIVERY_STATUSES = frozenset({*DELIVERY_ORDER, *DELIVERY_FINAL} - {"unknown"})  # "unknown" is ours


def _record_delivery_status(request: InboundRequest, runtime: Runtime) -> Outcome:
    """A status callback moves its reply's `delivery_status` forward; an unknown id is acknowledged and
    counted (Twilio reports on messages that are not ours to track, or not yet recorded)."""
    params = request.params
    sid = params.get("MessageSid") or params.get("SmsSid")
    status = (params.get("MessageStatus") or params.get("SmsStatus") or "").strip().lower()
    if not sid or not status:
        return Outcome("MISSING_REQUIRED_FIELD", "a status callback needs MessageSid and MessageStatus")
    if status not in _DELIVERY_STATUSES:
        return Outcome("PARSING_ERROR", f"MessageStatus {status!r} is not a delivery status")
    error_code = (params.get("ErrorCode") or "").strip() or None
    log = {"message_sid": sid, "delivery_status": status}
    result = _stored(
        "record the status",
        log,
        partial(runtime.store.record_delivery, sid, status, error_code, now=clock.now()),
    )
    if isinstance(result, Outcome):
        return result
    if result == "unknown":
        runtime.metrics.add("StatusCallbackUnknown")
    elif result == "recorded" and status == "delivered":
        runtime.metrics.add("ReplyDelivered")
    elif result == "recorded" and status in DELIVERY_FINAL:
        runtime.metrics.add("ReplyFailed", error_code=error_code or status)
    return Outcome(log=log, answer={"status": result, "message_sid": sid, "delivery_status": status})


def _verify(request: InboundRequest, runtime: Runtime) -> Outcome | None:
    """None when the request may proceed; in `report` mode a bad signature is only logged and counted.
    Every door needs its credential: without one the request is refused, never let through."""
    settings = runtime.settings
    door = _door(request, settings)
    if door is None:
        return None
    names, check = door
    name, secret = names[0], None
    try:
        for name in names:  # the first that is set (a shared key, else the auth token)
            if secret := runtime.secret(name):
                break
        problem = check(secret) if secret else None
        if problem is not None and (rotated := runtime.secret(name, refresh=True)) and rotated != secret:
            secret, problem = rotated, check(rotated)  # rotated since we read it
    except TransientBackendError as exc:
        return Outcome("DB_TRANSIENT_ERROR", f"cannot read {name}: {exc}")
    except BackendError as exc:  # the error names the account and the role: for the log only
        logger.error("cannot read a webhook credential", extra={"secret": name, "reason": str(exc)})
        return Outcome("CONFIGURATION_ERROR", f"cannot read {name}: the engine's log says why")
    if not secret:
        return Outcome("CONFIGURATION_ERROR", f"no {name} to check this request with: {_UNSET[name]}")
    if problem is None:
        return None
    runtime.metrics.add(
        "InvalidSignature", channel_type=request.channel.name if request.channel else "status"
    )
    if settings.verify_signatures == "report":
        logger.warning("invalid signature accepted (VERIFY_SIGNATURES=report)", extra={"reason": problem})
        return None
    return Outcome("INVALID_SIGNATURE", problem)


_UNSET = {
    "TWILIO_AUTH_TOKEN": "set TWILIO_AUTH_TOKEN, or the Twilio secret (TWILIO_SECRET_NAME)",
    "MAILGUN_SIGNING_KEY": "set MAILGUN_SIGNING_KEY to Mailgun's webhook signing key",
    "EMAIL_WEBHOOK_TOKEN": "set EMAIL_WEBHOOK_TOKEN (EMAIL_AUTH=off takes email unauthenticated, for local experiments)",
}


# The secrets a request must prove it knows (the first of the names that is set), and the check (None,
# or the reason it failed): looked up by the request's provider.
Door = tuple[tuple[str, ...], Callable[[str], str | None]]


def _door(request: InboundRequest, settings: Settings) -> Door | None:
    """The request's door; None when it is open on purpose (VERIFY_SIGNATURES=off, EMAIL_AUTH=off)."""
    if settings.verify_signatures == "off":
        return None
    return _DOORS[request.provider.name](request, settings)


def _twilio_door(request: InboundRequest, settings: Settings) -> Door:
    check = partial(verify_twilio, request, public_base_url=settings.public_base_url)
    if shared_key(request):  # Twilio's shared-key signing; the auth token where no key is configured
        return ("TWILIO_WEBHOOK_SIGNING_KEYS", "TWILIO_AUTH_TOKEN"), check
    return ("TWILIO_AUTH_TOKEN",), check


def _email_door(request: InboundRequest, settings: Settings) -> Door | None:
    if request.email_provider == "mailgun":
        return ("MAILGUN_SIGNING_KEY",), partial(verify_mailgun, request.params["signature"], now=clock.now())
    if settings.email_auth:
        return ("EMAIL_WEBHOOK_TOKEN",), partial(verify_email, request)
    return None


_DOORS: dict[str, Callable[[InboundRequest, Settings], Door | None]] = {
    TWILIO.name: _twilio_door,
    EMAIL.name: _email_door,
}


def _record_refused(context_object: dict[str, Any], reason: str, runtime: Runtime, log: dict) -> Outcome:
    """Keep a message refused while the conversation is locked where an operator can see it."""
    record = partial(
        runtime.store.record_refused_message, context_object["conversation_id"], user_message(context_object)
    )
    failed = _stored("record the refused message", log, record)
    return failed if isinstance(failed, Outcome) else Outcome("CONVERSATION_LOCKED", reason, log=log)
