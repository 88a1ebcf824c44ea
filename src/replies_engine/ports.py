"""The ports: what the stages need from storage and queues. Adapters live in `adapters/`.

Adapters translate their own failures into the errors below, so the stages decide on one vocabulary:
transient (retry later: a busy database, throttling, a timeout) or not.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .channels import Gsi

if TYPE_CHECKING:
    from .config import Settings
    from .observability import Metrics

Record = dict[str, Any]
Attributes = Mapping[str, str | int]


class BackendError(Exception):
    """A store or queue operation failed for good (retrying the same call will not help)."""


class TransientBackendError(BackendError):
    """A store or queue operation failed for now (locked database, throttling, timeout)."""


class StoreError(BackendError):
    pass


class TransientStoreError(StoreError, TransientBackendError):
    pass


class QueueError(BackendError):
    pass


class TransientQueueError(QueueError, TransientBackendError):
    pass


@dataclass(frozen=True)
class OutgoingMessage:
    """A message to send: body, delay and attributes."""

    body: str
    delay_seconds: int = 0
    attributes: Attributes = field(default_factory=dict)


@dataclass(frozen=True)
class QueuedMessage:
    """A message as a queue holds it (peek) or hands it out (receive)."""

    message_id: str
    queue: str
    body: str
    attributes: dict[str, str | int]
    sent_at: float  # unix seconds
    visible_at: float  # unix seconds
    receive_count: int = 0
    receipt_handle: str | None = None


@dataclass(frozen=True)
class LockOutcome:
    """What `lock_and_append` did.

    `acquired`: the lock is ours and `appended` are in `messages`; `locked`: someone else (`lock_owner`)
    holds it, nothing written; `duplicates`: every message was already there, nothing written;
    `missing`: no such conversation; `erased`: its person's data was erased, nothing is appended any
    more. Debounce mode adds `added` (`appended` are now pending; `record`
    is the record after) and `changed` (the pending messages changed since they were read).
    """

    status: str
    record: Record | None = None
    appended: list[Record] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    lock_owner: str | None = None


class ConversationStore(Protocol):
    """ConversationsTable (docs/design.md §4.1).

    A conversation's `messages` live apart from its record, one row (item) each, so that what every
    stage reads and writes costs the same in a 3,000-message conversation as in a 10-message one:
    records come back without `messages` (`messages()` reads them), and the writes below append rows,
    never rewriting the history.
    """

    def find_active(self, gsi: Gsi, company: str, recipient: str) -> list[Record]:
        """Records on `gsi` with these keys and `task_complete = 0`, in no particular order."""
        ...

    def get(self, conversation_id: str) -> Record | None:
        """The record (its §4.1 fields and `pending_messages`), without `messages`."""
        ...

    def messages(self, conversation_id: str, *, last: int | None = None) -> list[Record]:
        """The conversation's messages, oldest first; with `last`, only the newest `last` of them."""
        ...

    def put(self, record: Record) -> None:
        """Create the record, or replace the one with its `conversation_id`, its `messages` included:
        those the record carries replace the stored ones (tooling and tests)."""
        ...

    def list(self, status: str | None = None) -> list[Record]:
        """Records (without `messages`), by `conversation_id` (tooling)."""
        ...

    def migrate(self) -> dict[str, int]:
        """Move the messages that records from before still hold into their own rows (items); safe to
        run twice or after a crash. Returns `{"conversations": n, "messages": m}` moved."""
        ...

    def record_refused_message(self, conversation_id: str, message: Record) -> bool:
        """Keep a message refused as CONVERSATION_LOCKED in `refused_messages`, once per message id.

        Returns False when it was already recorded.
        """
        ...

    def write_unlocked(self, conversation_id: str, *, changes: Record, message: Record | None = None) -> bool:
        """A write that needs no lock (stage 1's keywords, an operator's hand-off or reply): set
        `changes` (`last_inbound_at` only ever moves forward) and append `message` (one the AI never
        answers: `no_reply`, an event, an agent's reply, indexed for status callbacks) unless its id is
        there already. One conditional write. False when the message was there (nothing written)."""
        ...

    def find_person(self, field: str, value: str) -> builtins.list[Record]:
        """Every conversation record whose `field` (`gsi_recipient_tel`, `gsi_recipient_email`,
        `recipient_bsuid`) is `value`, active or not, without its messages (AWS: a Scan)."""
        ...

    def erase(self, conversation_id: str, *, now: float) -> dict[str, int]:
        """Erase a person's data from one conversation: the record marked `erased_at` first (nothing is
        appended to it from then on), its messages and delivery pointers deleted, then the record
        replaced by its `decisions.tombstone`. The embedded database also drops the queued,
        dead-lettered and outbox entries that name the conversation (SQS cannot: the stages discard
        them on sight). Idempotent; a run that crashed leaves the address on the record, so the next
        run finds it and finishes. What went, counted (`messages`, `queued`, `outbox`)."""
        ...

    def prune_messages(self, before: float) -> int:
        """Delete the messages written before `before` (Unix seconds; their transcripts and media
        descriptions with them) and the delivery pointers left leading nowhere; the records keep their
        counters and status. How many messages went: the AWS store's items carry `expires_at` and
        DynamoDB's TTL deletes them, so it prunes nothing itself (0)."""
        ...

    def lock_and_append(
        self,
        conversation_id: str,
        batch_id: str,
        messages: builtins.list[Record],
        *,
        now: float,
        lock_timeout_seconds: float,
    ) -> LockOutcome:
        """One conditional write: skip messages whose `message_id` is present; if any remain and the
        conversation is not locked (or its lease expired), take the lock for `batch_id` and append them."""
        ...

    def add_pending(
        self, conversation_id: str, messages: builtins.list[Record], *, now: float
    ) -> LockOutcome:
        """Debounce: append to `pending_messages` the messages in neither `messages` nor
        `pending_messages`, bumping `pending_version`; no lock needed (docs/design.md §4.6)."""
        ...

    def flush_pending(
        self,
        conversation_id: str,
        batch_id: str,
        *,
        pending_version: int,
        now: float,
        lock_timeout_seconds: float,
        held: bool = False,
    ) -> LockOutcome:
        """Debounce: ONE conditional write that takes the lock (or, `held`, keeps `batch_id`'s) and moves
        `pending_messages` into `messages`, only if `pending_version` is still the one read."""
        ...

    def renew_lock(
        self, conversation_id: str, batch_id: str, *, now: float, changes: Record | None = None
    ) -> Record | None:
        """Only while `batch_id` holds the lock (expired or not: nobody took it over): its lease starts
        again at `now`, and `changes` are set (`sending`, or a new `lock_owner` for a re-drive).
        Returns the record after, or None when `batch_id` does not hold the lock."""
        ...

    def release_lock(
        self,
        conversation_id: str,
        batch_id: str,
        *,
        status: str,
        now: float,
        reply: Record | None = None,
        changes: Record | None = None,
    ) -> Record | None:
        """Unlock to `status`, appending `reply` and setting `changes`, only if `batch_id` still holds
        the lock (fencing); `sending` goes with the lock. The reply's provider ids (`message_id`,
        `parts`) are indexed for `record_delivery`. Returns the record after, or None when `batch_id`
        did not hold the lock."""
        ...

    def assign(
        self, conversation_id: str, operator: str, *, take_over: bool, now: float
    ) -> tuple[bool, Record | None]:
        """Claim the conversation for `operator` (`assigned_to`, `assigned_at`), unless another operator
        holds it and this is not `take_over`: (claimed, the record after, or as it is when not);
        (False, None) when there is no such conversation."""
        ...

    def record_delivery(self, provider_id: str, status: str, error_code: str | None, *, now: float) -> str:
        """A status callback: `delivery_status` (and `delivery_error_code`) of the reply that
        `provider_id` is (a part of), only moving forward (`conversation.delivery_moves`). Returns
        "recorded", "stale" (it would not move) or "unknown" (no reply has this id)."""
        ...

    def annotate_message(self, conversation_id: str, message_id: str, fields: Record) -> bool:
        """Set `fields` on a stored message (a voice note's `transcript`); False when it is not stored."""
        ...

    def count_turn(self, scope: str, day: str) -> int:
        """Count one AI turn for `scope` (a project) on `day` (UTC, `2026-12-01`) and return the day's
        count: atomic, so that replies made at once each count."""
        ...

    def turns(self, scope: str, day: str) -> int:
        """The AI turns counted for `scope` on `day` (0 before the first)."""
        ...

    def emergency_unlock(
        self, conversation_id: str, batch_id: str, *, reason: str, now: float, to_pending: bool = False
    ) -> Record | None:
        """`processing_error`, only if `batch_id` holds the lock. Its messages are taken out again: their
        queue records are reported failed and appended again on redelivery; with `to_pending`
        (debounce) they go back to `pending_messages` for the next flush."""
        ...

    def list_locked(self) -> builtins.list[Record]:
        """Conversations in `processing_reply`, from the sparse lock index (never a full scan)."""
        ...

    def reset_stalled(self, conversation_id: str, batch_id: str, *, now: float) -> Record | None:
        """`processing_timeout`, only if `batch_id` still holds the lock; the record after, or None."""
        ...


class MessageQueue(Protocol):
    """Named queues with SQS semantics: `whatsapp`, `sms`, `email`, `handoff`, `ai` and `NAME-dlq`."""

    def has_queue(self, queue: str) -> bool: ...

    def send(
        self, queue: str, body: str, *, delay_seconds: int = 0, attributes: Attributes | None = None
    ) -> str:
        """Enqueue `body`, invisible for `delay_seconds`; returns the message id."""
        ...

    def send_batch(self, queue: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Enqueue several messages to one queue; returns their ids."""
        ...

    def receive(
        self, queue: str, *, max_messages: int = 10, wait_seconds: float = 0, visibility_timeout: float = 30
    ) -> list[QueuedMessage]:
        """Up to `max_messages` visible messages, hidden from other receivers for `visibility_timeout`."""
        ...

    def delete(self, queue: str, receipt_handle: str) -> bool: ...

    def change_visibility(self, queue: str, receipt_handle: str, timeout: float) -> bool: ...

    def redrive(self, queue: str) -> int:
        """Move the messages of `queue`-dlq back to `queue`; returns how many."""
        ...

    def peek(self, queue: str) -> list[QueuedMessage]:
        """Every message in `queue`, visible or not, oldest first, without receiving it."""
        ...

    def stats(self) -> dict[str, dict[str, int]]:
        """Per queue: messages `available`, `delayed` and `in_flight` (received, not yet deleted)."""
        ...


class Outbox(Protocol):
    """Replies kept instead of sent through a provider (the embedded engine, email)."""

    def add(self, entry: Record) -> str:
        """Keep `entry` (channel_type, from, to, body, conversation_id, batch_id, part, part_count);
        returns its id."""
        ...

    def list(self) -> list[Record]: ...

    def prune(self, before: float) -> int:
        """Delete the entries kept before `before` (Unix seconds); how many. A queue's own retention
        period does it for a queue (0)."""
        ...

    def find(self, batch_id: str, part: int = 0) -> Record | bool | None:
        """The entry that part `part` of `batch_id`'s reply became, False when there is none, None when
        this outbox cannot be searched (a queue)."""
        ...


@dataclass(frozen=True)
class Handoff:
    """A responder's answer that asks for a human: `reason` for the operator, and `text`, a last word to
    the person ("a colleague will answer you here"), sent first unless empty."""

    reason: str
    text: str = ""
    usage: Record | None = None  # the model's token counts, recorded on the reply


@dataclass(frozen=True)
class Reply:
    """A responder's reply with what it cost: the model's token counts (`prompt_tokens`, …)."""

    text: str
    usage: Record | None = None


class CallCancelled(Exception):
    """A responder's call given up mid-way, because `cancelled` was set: no answer, and what it cost
    so far (`usage`, the token counts the engine could tell). `asked`: False when it was given up
    before the responder was asked."""

    def __init__(self, usage: Record | None = None, asked: bool = True) -> None:
        super().__init__("the call was cancelled")
        self.usage, self.asked = usage, asked


class Responder(Protocol):
    """Produces the reply to a batch: the AI stage. A responder that can give up a call mid-way (its
    HTTP request closed) says `cancellable = True`, takes `cancelled` (a `threading.Event`) and raises
    CallCancelled once it is set."""

    def respond(self, ai_context: Record) -> str | Reply | Handoff: ...


PERSON_OPTED_OUT, WINDOW_CLOSED = "opted_out", "window_closed"  # what a PermanentSendError's `kind` may say


class SendError(RuntimeError):
    """How a send failed, since what happens next depends on it. `code`: the provider's own (recorded
    as `last_error_code`); `kind`: what it means to the engine, when it means more than a failure."""

    def __init__(self, message: str, code: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind


class TransientSendError(SendError):
    """The provider refused for now, before anything was sent (throttled, unavailable, unreachable, bad
    credentials: a rotated token must not fail every reply for good): retried, the lock kept."""


class AmbiguousSendError(SendError):
    """The request may have reached the provider (a timeout after it was sent): the retry asks
    `went_out` before it sends again."""


class PermanentSendError(SendError):
    """The provider refused for good: never retried. `kind` PERSON_OPTED_OUT (the person unsubscribed or
    blocked the sender), WINDOW_CLOSED (WhatsApp's 24-hour window), or None."""


class Sender(Protocol):
    """Delivers a reply on its channel, part by part (`adapters/senders.py`), failing with a SendError."""

    def send(self, note: Record, part: int) -> str:
        """Send part `part` of the delivery note (`sending`: texts, to, from, batch_id, …); returns the
        provider's message id."""
        ...

    def went_out(self, note: Record, part: int) -> str | bool | None:
        """Did part `part` of the noted reply go out? The provider's message id if it did, False if it
        surely did not, None when the provider cannot tell."""
        ...


# The settings that are secrets: in AWS they come from Secrets Manager, never from the environment the
# template writes (anyone allowed lambda:GetFunctionConfiguration could read them there).
SECRET_VARIABLES = (
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_WEBHOOK_SIGNING_KEYS",
    "EMAIL_WEBHOOK_TOKEN",
    "MAILGUN_SIGNING_KEY",
    "OPENAI_API_KEY",
    "TRANSCRIBE_API_KEY",
    "AGENT_SECRET",
    "SMTP_URL",
    "HANDOFF_WEBHOOK_SECRET",
)


class Notifier(Protocol):
    """Tells people that a person waits for a human (`notices.py`): a webhook, an SNS topic."""

    def notify(self, notice: Record) -> None:
        """Deliver the notice (`{"kind", "text", "conversation_id", …}`); raises when it did not go, so
        that the queue gives it again (and dead-letters it in the end)."""
        ...


class SecretSource(Protocol):
    """The backend's own secrets, by variable name (one of SECRET_VARIABLES)."""

    def get(self, name: str, refresh: bool = False) -> str | None:
        """The secret's current value, None when the backend has none. `refresh`: the provider refused
        the cached value (a rotated token): read it again, at most every few seconds."""
        ...


class MailGone(BackendError):
    """The stored mail is not there (expired, deleted, never written): reading again will not help."""


class InboundMail(Protocol):
    """Whole inbound mails as a provider stored them (Amazon SES: in S3), by the provider's message id."""

    def read(self, message_id: str) -> bytes:
        """The mail's bytes (RFC 5322); MailGone, or another BackendError (transient: try again)."""
        ...


class OperatorStore(Protocol):
    """The operators' accounts, their page sessions and the failed logins counted against brute force.
    An account is `{"name", "role", "token_hash", "created_at"}`: its token is kept only as a hash."""

    def add_operator(self, account: Record) -> bool:
        """Create the account; False when one with its name exists."""
        ...

    def replace_token(self, name: str, token_hash: str) -> Record | None:
        """The account with a new token (the old one stops working at once); None when there is none."""
        ...

    def remove_operator(self, name: str) -> bool:
        """Delete the account (its token and sessions stop working at once); False when there was none."""
        ...

    def operator(self, name: str) -> Record | None: ...

    def operators(self) -> list[Record]:
        """Every account, by name."""
        ...

    def operator_by_token(self, token_hash: str) -> Record | None: ...

    def add_session(self, session_hash: str, session: Record) -> None:
        """A page session: `{"name", "credential", "expires_at"}` (unix seconds)."""
        ...

    def session(self, session_hash: str) -> Record | None: ...

    def remove_session(self, session_hash: str) -> None:
        """End a page session (a logout)."""
        ...

    def count_failure(self, key: str, window: int) -> int:
        """One more failed login for `key` (an account or an address) in the time window `window`; the
        count in that window after it."""
        ...

    def failures(self, key: str, window: int) -> int: ...


class Runtime(Protocol):
    """What a stage is handed: the settings and the adapters the composition root (`bootstrap`) built
    for this process. Stages depend on this, never on how it is built."""

    settings: Settings
    store: ConversationStore
    queue: MessageQueue
    outbox: Outbox
    metrics: Metrics
    secrets: SecretSource

    # made on first use: only the stage that needs one pays for it
    @property
    def senders(self) -> dict[str, Sender]: ...  # by channel_type

    @property
    def responder(self) -> Responder: ...

    @property
    def transcriber(self) -> Any: ...  # replies.media.Transcriber, or None without TRANSCRIBE_MODEL

    @property
    def media_fetcher(self) -> Any: ...  # replies.media.MediaFetcher

    @property
    def projects(self) -> dict[str, dict[str, Any]]: ...  # PROJECTS_FILE

    @property
    def operators(self) -> OperatorStore: ...

    @property
    def notifiers(self) -> list[Notifier]: ...  # HANDOFF_WEBHOOK_URL, HANDOFF_TOPIC_ARN

    @property
    def inbound_mail(self) -> InboundMail: ...  # AWS: INBOUND_MAIL_BUCKET

    def secret(self, name: str, refresh: bool = False) -> str | None: ...

    def twilio_auth_token(self, refresh: bool = False) -> str | None: ...

    def twilio_account_sid(self) -> str | None: ...
