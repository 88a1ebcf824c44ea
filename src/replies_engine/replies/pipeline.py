"""Stage 3, the reference reply stage: produce the reply, send it, release the lock (only its holder).

For each AI-queue record: picking it up starts the lease again, and a heartbeat renews it while the
responder works (and refreshes WhatsApp's typing indicator), so a slow model keeps the lock and only a
dead holder loses it. Under it, before the AI is asked, the batch's files are read (`media.py`: voice
notes transcribed) and the company's instructions found; past a daily cap (`projects.py`), a human
answers instead. If the batch no longer holds the lock (its lease expired and a new batch or the
sweeper took it over and answers its messages), the stale reply is not sent. A responder failure is
retried with the lock kept (the record is reported failed). The reply goes out by its channel's rules
(`delivery.py`): noted before it goes, in parts, each recorded as it goes, so that a person never gets
the same part twice. The reply lists the messages it `answers`: exactly those the responder saw.

Debounce mode (supersede): if newer messages are pending when the reply is ready, `regenerate` moves
them in under the same lock and sends the extended context back through the AI queue; `drop`
unlocks and lets the next batch answer. A conversation handed to a human meanwhile gets no AI reply.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import clock, envelope
from ..channels import AI_QUEUE
from ..conversation import REPLY_SUPERSEDED, holds, readable
from ..envelope import SqsRecord
from ..handoff import handoff_reply_text
from ..mail import reply_address
from ..ports import CallCancelled, Handoff, Reply, Runtime
from ..sending import settle
from . import media, projects
from .delivery import deliver, finish, new_note, withheld, write_note
from .http import ResponderError

logger = logging.getLogger(__name__)
Usage = dict[str, Any] | None  # a model's token counts

RETRY_BACKOFF_SECONDS = 10  # a failed reply's wait before its first retry, doubled with each receive
RETRY_MAX_WAIT_SECONDS = 120  # and at most this: well within the lease (LOCK_TIMEOUT_SECONDS) it keeps
TYPING_REFRESH_SECONDS = 20  # Twilio's typing indicator shows for 25 s
_ROUNDS = 3  # regenerate at most this often: someone who never stops typing still gets an answer
_ATTEMPTS = 5  # re-reads when a new message races the move of the pending ones
WATCH_SECONDS = 0.5  # SPECULATE: how often a call in flight looks for newer messages (one store read)


def send_replies(event: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
    """An SQS event from the AI queue → `{"batchItemFailures": [...]}`; a failed reply comes back soon."""
    return envelope.each_record(
        event,
        envelope.read_ai_context,
        "ai",
        runtime.metrics,
        lambda context: _reply(context, runtime),
        retry=lambda record: _retry_soon(runtime, record),
    )


def _retry_soon(runtime: Runtime, record: SqsRecord) -> None:
    """A failed reply comes back after a short, growing backoff, not after the queue's visibility
    timeout (12 minutes in AWS): well within the lease that it keeps."""
    if record.receipt_handle is None:
        return
    try:
        runtime.queue.change_visibility(
            AI_QUEUE,
            record.receipt_handle,
            min(
                RETRY_BACKOFF_SECONDS * 2 ** min(max(0, record.receive_count - 1), 16), RETRY_MAX_WAIT_SECONDS
            ),
        )
    except Exception as exc:  # it comes back after the visibility timeout instead
        logger.warning("could not shorten the retry's wait", extra={"error": str(exc)})


def _reply(context: dict[str, Any], runtime: Runtime) -> bool:
    """One AI context, replied to: True when done (answered, or not to be answered by this holder)."""
    conversation_id, batch_id = context["conversation_id"], context["batch_id"]
    log = {"conversation_id": conversation_id, "batch_id": batch_id}
    # Picked up: the lease starts again here, however long the context waited in the queue.
    held = runtime.store.renew_lock(conversation_id, batch_id, now=clock.now())
    if held is None:
        logger.warning("batch no longer holds the lock: its reply is not made", extra=log)
        return True
    if held.get("sending"):  # an earlier attempt began sending: it is finished, nothing sent twice
        note = settle(runtime, held["sending"])
        held = write_note(runtime, context, note)
        return True if held is None else deliver(runtime, context, note, held)
    if (stopped := _not_for_the_ai(runtime, context, held, log)) is not None:
        return stopped
    try:
        answer = _held_answer(context) or _answer(runtime, context, held, log)
    except CallCancelled as cancelled:
        return _cancelled(runtime, context, cancelled, log)
    cost = {"usage": answer.usage} if answer.usage else {}  # recorded on the reply, with the
    if context.get("discarded_usage", {}).get("calls"):  # calls made before it in vain
        cost["discarded_usage"] = context["discarded_usage"]
    if isinstance(answer, Handoff):  # the AI asks for a human: its last word goes, then a human owns it
        last_word = answer.text or handoff_reply_text(runtime, held)
        return _hand_over(runtime, context, held, answer.reason, last_word, cost)
    current = _current(runtime, context, log, spent=answer.usage)
    if isinstance(current, bool):
        return current
    if (wait := runtime.settings.batching.hold_seconds(context["messages"], clock.now())) > 0:
        return _hold(runtime, context, answer, wait, log)
    # Noted before it goes: if this holder dies while sending, whoever finds the note asks the sender
    # which parts went, and sends only the others. Nobody gets the same answer twice.
    note = {**new_note(runtime, context, answer.text), **cost}
    record = _noted(runtime, context, note, current)
    if record is None:
        logger.warning("lock lost before the send: the stale reply is not sent", extra=log)
        return True
    return deliver(runtime, context, note, record)


def _held_back(messages: list[dict[str, Any]], runtime: Runtime) -> bool:
    """Speculating, a reply to `messages` would wait for the quiet period (or the max wait) still."""
    return runtime.settings.batching.hold_seconds(messages, clock.now()) > 0


def _held_answer(context: dict[str, Any]) -> Reply | None:
    """The answer a speculating reply held for the quiet period, made already: not asked again."""
    held = context.get("held_answer")
    return Reply(held["text"], held.get("usage")) if held else None


def _hold(runtime: Runtime, context: dict[str, Any], answer: Reply, wait: float, log: dict[str, str]) -> bool:
    """SPECULATE: the answer is ready before the person has been quiet long enough. It comes back with
    the context once they have (the lock kept); what they write meanwhile is moved in and answered
    again with it (`_current`), so no reply goes that misses a message sent before it."""
    held = {**context, "held_answer": {"text": answer.text, "usage": answer.usage}}
    runtime.queue.send(AI_QUEUE, json.dumps(held, ensure_ascii=False), delay_seconds=math.ceil(wait))
    runtime.metrics.add("ReplyHeld")
    logger.info("reply ready, held for the quiet period", extra={**log, "seconds": round(wait, 1)})
    return True


def _cancelled(
    runtime: Runtime, context: dict[str, Any], cancelled: CallCancelled, log: dict[str, str]
) -> bool:
    """SPECULATE: the person wrote again while the AI thought (or while their files were read, before
    it was asked), and its call was given up. The new messages are moved in and the AI asked again
    with them (`_current`)."""
    if cancelled.asked:
        runtime.metrics.add("AiCallCancelled")
    logger.info("the AI's call is given up: newer messages came, or the lock was lost", extra=log)
    spent = _added(context.get("discarded_usage"), cancelled.usage, int(cancelled.asked))
    context = {**context, "discarded_usage": spent}
    current = _current(runtime, context, log, spent=None, calls=0)
    if isinstance(current, bool):
        return current
    # Nothing to move in after all (messages kept racing the move): asked again at once, lock kept,
    # a round counted (so that the watch stops cancelling after _ROUNDS).
    logger.warning("no newer messages to move in: the AI is asked again", extra=log)
    again = {**context, "regenerations": context.get("regenerations", 0) + 1}
    runtime.queue.send(AI_QUEUE, json.dumps(again, ensure_ascii=False))
    return True


def _not_for_the_ai(
    runtime: Runtime, context: dict[str, Any], held: dict[str, Any], log: dict[str, str]
) -> bool | None:
    """Checked before the AI is paid for: a conversation that gets no reply (a human's, opted out), or
    one past its daily cap on AI turns (a human answers). None: the AI answers."""
    if status := withheld(runtime, held, context["channel_type"]):  # and again before each part
        logger.info("no reply is made", extra={**log, "status": status})
        return finish(runtime, context, None, status)
    if reason := projects.over_cap(runtime, held):
        runtime.metrics.add("AiTurnCapReached")
        logger.warning("a daily cap on AI turns is reached: a human answers", extra={**log, "reason": reason})
        return _hand_over(runtime, context, held, reason, handoff_reply_text(runtime, held), counted=False)
    return None


def _hand_over(
    runtime: Runtime,
    context: dict[str, Any],
    held: dict[str, Any],
    reason: str,
    last_word: str,
    cost: dict[str, Any] | None = None,
    counted: bool = True,
) -> bool:
    """A human takes the conversation: `last_word` goes to the person first (the AI's, or the
    project's hand-off text: never silence), then the unlock makes a human the owner. `counted`: the
    AI made it (a turn for the daily caps)."""
    note = {**new_note(runtime, context, last_word), "hand_off": reason, **(cost or {})}
    record = _noted(runtime, context, note, held) if counted else write_note(runtime, context, note)
    return True if record is None else deliver(runtime, context, note, record)


def _answer(
    runtime: Runtime, context: dict[str, Any], held: dict[str, Any], log: dict[str, str]
) -> Reply | Handoff:
    """The AI's answer, under a heartbeat: a slow model keeps the lock, a dead one not. Voice notes are
    transcribed and the company's instructions found before it is asked."""
    speculating = runtime.settings.batching.speculate and getattr(runtime.responder, "cancellable", False)
    with Heartbeat(
        runtime,
        context["conversation_id"],
        context["batch_id"],
        typing=_typing(runtime, context),
        watch=(lambda: _stale(runtime, context)) if speculating else None,
    ) as heartbeat:
        view = media.prepare(runtime, context)
        if instructions := projects.instructions(runtime, held):
            view = {**view, "instructions": instructions}
        answer = _respond(runtime, view, log, heartbeat.cancelled if speculating else None)
    return Reply(answer) if isinstance(answer, str) else answer


def _stale(runtime: Runtime, context: dict[str, Any]) -> bool:
    """Would the answer in the making not be sent: the lock lost, or newer messages superseding it?"""
    record = _holds_lock(runtime, context["conversation_id"], context["batch_id"])
    return record is None or superseded(runtime, context, record)


def superseded(runtime: Runtime, context: dict[str, Any], record: dict[str, Any]) -> bool:
    """Do the messages pending on `record` supersede the reply to `context` (debounce)? When they can
    all be read (stage 2's flush dead-letters the others), and the reply has not been made again
    _ROUNDS times already (speculating: unless it would wait for the quiet anyway)."""
    rounds = context.get("regenerations", 0)
    pending = record.get("pending_messages") or []
    return (
        bool(pending)
        and len(readable(pending)) == len(pending)
        and runtime.settings.batching.supersede is not None
        and (rounds < _ROUNDS or _held_back([*context["messages"], *pending], runtime))
    )


def _current(
    runtime: Runtime, context: dict[str, Any], log: dict[str, str], spent: Usage, calls: int = 1
) -> dict[str, Any] | bool:
    """The record to send the reply under; else whether this context is done, the reply not to be sent:
    the lock was lost, or (debounce) newer messages arrived and supersede it (`drop`: the next batch
    answers; `regenerate`: they are moved in under the same lock and the AI answers again, the tokens
    `spent` on this answer, by `calls` calls, added to the context's `discarded_usage`)."""
    conversation_id, batch_id = context["conversation_id"], context["batch_id"]
    discarded = _added(context.get("discarded_usage"), spent, calls)  # before a move it could fail
    for _ in range(_ATTEMPTS):
        record = _holds_lock(runtime, conversation_id, batch_id)
        if record is None:  # the lease ran out (the heartbeat could not renew it) and was taken over
            logger.warning("lock lost while the reply was made: the stale reply is not sent", extra=log)
            return True
        if not superseded(runtime, context, record):
            return record
        runtime.metrics.add("ReplySuperseded")
        if runtime.settings.batching.supersede == "drop":
            logger.info("newer messages arrived: the reply is dropped, the next batch answers all", extra=log)
            return finish(runtime, context, None, REPLY_SUPERSEDED)
        outcome = runtime.store.flush_pending(
            conversation_id,
            batch_id,
            pending_version=record.get("pending_version", 0),
            now=clock.now(),
            lock_timeout_seconds=runtime.settings.lock_timeout_seconds,
            held=True,
        )
        if outcome.status == "acquired":
            # This stale reply is not sent. Back through the AI queue: a full AI pass, checked again after.
            latest = outcome.appended[-1]
            regenerate = {
                **{k: v for k, v in context.items() if k != "held_answer"},  # answered again, with them
                "messages": [*context["messages"], *outcome.appended],
                "reply_address": reply_address(context.get("conversation") or {}, latest),
                "regenerations": context.get("regenerations", 0) + 1,
                "discarded_usage": discarded,
            }
            runtime.queue.send(AI_QUEUE, json.dumps(regenerate, ensure_ascii=False))
            logger.info(
                "newer messages arrived: answering again with them",
                extra={**log, "added": len(outcome.appended)},
            )
            return True
    assert record is not None  # each round above returned when the lock was lost
    return record  # messages kept racing the move: this reply goes, the next batch answers them


def _respond(
    runtime: Runtime, view: dict[str, Any], log: dict[str, str], cancelled: threading.Event | None
) -> str | Reply | Handoff:
    """The responder's answer (given up once `cancelled` is set: CallCancelled). A model that refuses
    the images (one that cannot see, a format it does not take) is asked once more with them
    described: the person is answered, not dead-lettered."""
    options = {} if cancelled is None else {"cancelled": cancelled}
    if cancelled is not None and cancelled.is_set():
        raise CallCancelled(asked=False)  # newer messages came while the files were read
    try:
        return runtime.responder.respond(view, **options)
    except ResponderError as exc:
        described = media.without_images(view) if exc.status and 400 <= exc.status < 500 else None
        if described is None:
            raise
        logger.warning(
            "the model refused the images: asked again without them", extra={**log, "error": str(exc)}
        )
        runtime.metrics.add("ImagesRefused")
        if cancelled is not None and cancelled.is_set():
            raise CallCancelled(asked=False) from exc
        return runtime.responder.respond(described, **options)


def _added(total: Usage, usage: Usage, calls: int) -> dict[str, Any]:
    """`total` with `calls` more calls and their token counts (`estimated` when any is)."""
    summed = dict(total or {})
    for key, value in [("calls", calls), *(usage or {}).items()]:
        before = summed.get(key)
        if isinstance(value, bool):
            summed[key] = before is True or value
        elif isinstance(value, int | float):
            summed[key] = (before if isinstance(before, int | float) else 0) + value
    return summed


def _noted(
    runtime: Runtime, context: dict[str, Any], note: dict[str, Any], record: dict[str, Any]
) -> dict[str, Any] | None:
    """Write the AI's new reply's note, counting the reply for the daily caps; the record after, None
    when the lock was lost."""
    written = write_note(runtime, context, note, projects.one_more_reply(record))
    if written is not None:
        projects.count_project_reply(runtime, written)
    return written


def _typing(runtime: Runtime, context: dict[str, Any]) -> Callable[[], None] | None:
    """WhatsApp's "typing…" for the person's latest message, when a Twilio account sends the replies."""
    typing = getattr(runtime.senders.get(context["channel_type"]), "typing", None)
    if context["channel_type"] != "whatsapp" or typing is None or not context["messages"]:
        return None
    message_id = context["messages"][-1]["message_id"]
    return lambda: typing(message_id)


class Heartbeat:
    """While the responder works: renews the batch's lease every third of LOCK_TIMEOUT_SECONDS (the
    lease is there to free the lock of a dead holder, not of a slow one), shows `typing` at once and
    every TYPING_REFRESH_SECONDS (best-effort: a failure changes nothing), and asks `watch` every
    WATCH_SECONDS whether the answer in the making is still wanted: once not, `cancelled` is set."""

    def __init__(
        self,
        runtime: Runtime,
        conversation_id: str,
        batch_id: str,
        typing: Callable[[], None] | None = None,
        watch: Callable[[], bool] | None = None,
    ) -> None:
        self.runtime, self.conversation_id, self.batch_id = runtime, conversation_id, batch_id
        self.typing, self.watch = typing, watch
        self.interval = runtime.settings.lock_timeout_seconds / 3
        self.cancelled = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{batch_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        start, never = time.monotonic(), float("inf")
        next_renewal, next_typing = start + self.interval, start if self.typing else never
        next_watch = start + WATCH_SECONDS if self.watch else never
        while True:
            now = time.monotonic()
            if now >= next_typing:
                self._show_typing()
                next_typing = now + TYPING_REFRESH_SECONDS
            if now >= next_renewal:
                if not self._renew():
                    self.cancelled.set()  # taken over: the reply will not be sent, its call not needed
                    return
                next_renewal = now + self.interval
            if now >= next_watch:
                if self._unwanted():
                    self.cancelled.set()
                    next_watch = never
                else:
                    next_watch = now + WATCH_SECONDS
            if self._stop.wait(max(0.0, min(next_renewal, next_typing, next_watch) - time.monotonic())):
                return

    def _renew(self) -> bool:
        try:
            return (
                self.runtime.store.renew_lock(self.conversation_id, self.batch_id, now=clock.now())
                is not None
            )
        except Exception as exc:  # the next beat tries again; the lease has two more thirds
            logger.warning("lease renewal failed", extra={**self._log, "error": str(exc)})
            return True

    def _unwanted(self) -> bool:
        assert self.watch is not None  # due only when there is one (`_beat`)
        try:
            return self.watch()
        except Exception as exc:  # the next look tries again; the answer is checked after anyway
            logger.warning("could not look for newer messages", extra={**self._log, "error": str(exc)})
            return False

    def _show_typing(self) -> None:
        assert self.typing is not None  # due only when there is one (`_beat`)
        try:
            self.typing()
        except Exception as exc:
            logger.warning("typing indicator failed (best-effort)", extra={**self._log, "error": str(exc)})

    @property
    def _log(self) -> dict[str, str]:
        return {"conversation_id": self.conversation_id, "batch_id": self.batch_id}


def _holds_lock(runtime: Runtime, conversation_id: str, batch_id: str) -> dict[str, Any] | None:
    """The record while `batch_id` holds its lock, else None."""
    record = runtime.store.get(conversation_id)
    return record if holds(record, batch_id) else None
