"""The composition root: settings → adapters, built once per process on first use (a Lambda container
pays for it on its first request, not at import)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import TYPE_CHECKING, Any

from .config import ConfigurationError, Settings
from .observability import Metrics, configure_logging
from .ports import ConversationStore, MessageQueue, Outbox, Responder, Sender

if TYPE_CHECKING:
    from .replies.media import MediaFetcher, Transcriber

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    store: ConversationStore
    queue: MessageQueue
    metrics: Metrics
    credentials: Callable[[], dict[str, str]]  # the backend's Twilio credentials (local token, secret)
    outbox: Outbox
    responder: Responder = field(init=False)
    senders: dict[str, Sender] = field(init=False)  # by channel_type
    close: Callable[[], None] = field(default=lambda: None)

    def __post_init__(self) -> None:
        from .replies.responders import LocalResponder, OpenAIResponder
        from .replies.senders import OutboxSender, SmtpSender, TwilioSender

        settings = self.settings
        client = self._ai_client
        if settings.responder == "openai":
            self.responder = OpenAIResponder(
                settings.openai_base_url,
                settings.openai_api_key,
                settings.openai_model,
                attempts=settings.responder_attempts,
                **client,
            )
        elif settings.responder == "http":
            from .replies.agent import AgentResponder

            self.responder = AgentResponder(
                settings.agent_url, settings.agent_secret, attempts=settings.responder_attempts, **client
            )
        else:
            self.responder = LocalResponder(settings.local_responder_delay_seconds)
        outbox = OutboxSender(self.outbox)
        status_callback = f"{settings.public_base_url}/twilio/status" if settings.public_base_url else None
        twilio = (
            TwilioSender(self.twilio_account_sid, self.twilio_auth_token, status_callback)
            if settings.twilio_account_configured
            else outbox
        )
        email = outbox
        if settings.email_sender == "smtp":
            try:
                email = SmtpSender(settings.smtp_url)
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from None
        elif settings.email_sender == "ses":
            from .adapters.aws.ses import SesSender

            email = SesSender()
        self.senders = {"whatsapp": twilio, "sms": twilio, "email": email}

    @property
    def _ai_client(self) -> dict[str, Any]:
        """The AI's servers' client settings: one pooled client each, a connection per reply in flight."""
        return {
            "timeout_seconds": self.settings.responder_timeout_seconds,
            "max_connections": self.settings.reply_concurrency,
        }

    @cached_property
    def transcriber(self) -> Transcriber | None:
        """Voice notes' transcriber, with TRANSCRIBE_MODEL; made by the reply stage on first use."""
        from .replies.media import Transcriber

        settings = self.settings
        if not settings.transcribe_model:
            return None
        return Transcriber(
            settings.transcribe_base_url,
            settings.transcribe_api_key,
            settings.transcribe_model,
            attempts=2,  # within MEDIA_WAIT_SECONDS: a second try, not a third
            **self._ai_client,
        )

    @cached_property
    def projects(self) -> dict[str, dict[str, Any]]:
        """PROJECTS_FILE, read by the reply stage alone: a bad file never stops the webhook's intake."""
        from .replies import projects

        return projects.load(self.settings.projects_file)

    @cached_property
    def media_fetcher(self) -> MediaFetcher:
        """Gets the files people send; Twilio's with the account's credentials."""
        from .replies.media import MediaFetcher

        def credentials() -> tuple[str, str] | None:
            sid, token = self.twilio_account_sid(), self.twilio_auth_token()
            return (sid, token) if sid and token else None

        return MediaFetcher(credentials, self.settings.max_media_bytes)

    def twilio_auth_token(self) -> str | None:
        """The token Twilio signs with: TWILIO_AUTH_TOKEN, else the backend's own source."""
        return self.settings.twilio_auth_token or self.credentials().get("auth_token")

    def twilio_account_sid(self) -> str | None:
        return self.settings.twilio_account_sid or self.credentials().get("account_sid")


def build_runtime(settings: Settings) -> Runtime:
    if settings.backend == "sqlite":
        from .adapters.sqlite import Database, SqliteConversationStore, SqliteMessageQueue, SqliteOutbox

        database = Database(settings.sqlite_path, settings.sqlite_busy_timeout_ms)
        return Runtime(
            settings=settings,
            store=SqliteConversationStore(database),
            queue=SqliteMessageQueue(database),
            metrics=Metrics(),
            credentials=cache(lambda: {"auth_token": database.local_auth_token()}),
            outbox=SqliteOutbox(database),
            close=database.close,
        )
    from .adapters.aws import DynamoConversationStore, SqsMessageQueue, twilio_credentials
    from .adapters.aws.outbox import SqsOutbox

    if not (settings.conversations_table and settings.messages_table):
        raise ConfigurationError("REPLIES_BACKEND=aws needs CONVERSATIONS_TABLE and MESSAGES_TABLE")
    queue = SqsMessageQueue(settings.queue_urls)
    secret = settings.twilio_secret_name
    return Runtime(
        settings=settings,
        store=DynamoConversationStore(settings.conversations_table, settings.messages_table),
        queue=queue,
        metrics=Metrics(emf_namespace="RepliesEngine"),
        credentials=(lambda: twilio_credentials(secret)) if secret else dict,
        outbox=SqsOutbox(queue),
    )


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    """The process's runtime, built from the environment on first call."""
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                settings = Settings.from_env()
                configure_logging(settings.log_level)
                if settings.verify_signatures == "off":
                    logger.warning("VERIFY_SIGNATURES=off: webhook requests are accepted unsigned")
                elif not settings.email_webhook_token:
                    logger.warning("EMAIL_WEBHOOK_TOKEN is not set: /email accepts unauthenticated requests")
                _runtime = build_runtime(settings)
    return _runtime


def reset_runtime() -> None:
    """Forget the runtime so the next call reads the environment again (tests, CLI)."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            _runtime.close()
        _runtime = None
