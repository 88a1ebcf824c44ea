"""The composition root: settings → adapters, built once per process on first use (a Lambda container
pays for it on its first request, not at import)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .channels import CHANNELS, EMAIL, TWILIO
from .config import ConfigurationError, Settings
from .observability import Metrics, configure_logging
from .ports import (
    ConversationStore,
    InboundMail,
    MessageQueue,
    Notifier,
    OperatorStore,
    Outbox,
    Responder,
    SecretSource,
    Sender,
)

if TYPE_CHECKING:
    from .replies.media import MediaFetcher, Transcriber

logger = logging.getLogger(__name__)


@dataclass
class Components:
    """What the composition root builds: the adapters for the settings, made on first use. Stages see it
    as a `ports.Runtime`."""

    settings: Settings
    store: ConversationStore
    queue: MessageQueue
    metrics: Metrics
    secrets: SecretSource  # the backend's own: tokens made locally, Secrets Manager in AWS
    outbox: Outbox
    make_operators: Callable[[], OperatorStore] = field(default=lambda: _no_operators())
    close: Callable[[], None] = field(default=lambda: None)

    @cached_property
    def notifiers(self) -> list[Notifier]:
        """Who is told that a person waits for a human: HANDOFF_WEBHOOK_URL, HANDOFF_TOPIC_ARN (AWS)."""
        found: list[Notifier] = []
        if self.settings.handoff_webhook_url:
            from .adapters.notifiers import WebhookNotifier

            found.append(
                WebhookNotifier(self.settings.handoff_webhook_url, self.secret("HANDOFF_WEBHOOK_SECRET"))
            )
        if self.settings.handoff_topic_arn:
            from .adapters.aws.sns import SnsNotifier

            found.append(SnsNotifier(self.settings.handoff_topic_arn))
        return found

    @cached_property
    def inbound_mail(self) -> InboundMail:
        """Where SES's receipt rule stores inbound mail (AWS, INBOUND_MAIL_BUCKET)."""
        if self.settings.backend != "aws" or not self.settings.inbound_mail_bucket:
            raise ConfigurationError("INBOUND_MAIL_BUCKET is not set: no stored inbound mail to read")
        from .adapters.aws.inbound_mail import S3InboundMail

        return S3InboundMail(self.settings.inbound_mail_bucket, self.settings.inbound_mail_prefix)

    @cached_property
    def operators(self) -> OperatorStore:
        """The operators' accounts, made on first use: only the inbox and the command line need them."""
        return self.make_operators()

    @cached_property
    def responder(self) -> Responder:
        """The AI (RESPONDER), made on first use: only the reply stage needs it, and its keys."""
        from .replies.responders import LocalResponder, OpenAIResponder

        settings = self.settings
        client = self._ai_client
        if settings.responder == "openai":
            if not self.secret("OPENAI_API_KEY") and "api.openai.com" in settings.openai_base_url:
                raise ConfigurationError(
                    "RESPONDER=openai calls api.openai.com, which needs OPENAI_API_KEY"
                    " (or set OPENAI_BASE_URL to a server that needs no key)"
                )
            return OpenAIResponder(
                settings.openai_base_url,
                self.secret("OPENAI_API_KEY"),
                settings.openai_model,
                attempts=settings.responder_attempts,
                **client,
            )
        if settings.responder == "http":
            from .replies.agent import AgentResponder

            secret = self.secret("AGENT_SECRET")
            if not secret:
                raise ConfigurationError("AGENT_SECRET is required with RESPONDER=http")
            assert settings.agent_url  # Settings.from_env requires AGENT_URL with RESPONDER=http
            return AgentResponder(
                settings.agent_url,
                secret,
                attempts=settings.responder_attempts,
                **client,
            )
        return LocalResponder(settings.local_responder_delay_seconds)

    @cached_property
    def senders(self) -> dict[str, Sender]:
        """How replies reach people, by channel_type (each channel its provider's); made on first use."""
        from .adapters.senders import OutboxSender, SmtpSender, TwilioSender

        settings = self.settings
        outbox = OutboxSender(self.outbox)
        status_callback = f"{settings.public_base_url}/twilio/status" if settings.public_base_url else None
        twilio = (
            TwilioSender(self.twilio_account_sid, self.twilio_auth_token, status_callback)
            if settings.twilio_account_configured
            else outbox
        )
        email: Sender = outbox
        if settings.email_sender == "smtp":
            try:
                email = SmtpSender(self.secret("SMTP_URL") or "")
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from None
        elif settings.email_sender == "ses":
            from .adapters.aws.ses import SesSender

            email = SesSender(settings.ses_configuration_set)
        by_provider = {TWILIO.name: twilio, EMAIL.name: email}
        return {name: by_provider[channel.provider.name] for name, channel in CHANNELS.items()}

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
            self._transcribe_api_key(),
            settings.transcribe_model,
            attempts=2,  # within MEDIA_WAIT_SECONDS: a second try, not a third
            **self._ai_client,
        )

    def _transcribe_api_key(self) -> str | None:
        """TRANSCRIBE_API_KEY, else OPENAI_API_KEY when the transcriber is OpenAI's own server: the key
        goes to its own server only, never to another transcription service."""
        settings = self.settings
        key = self.secret("TRANSCRIBE_API_KEY")
        if (
            not key
            and urlsplit(settings.transcribe_base_url).netloc == urlsplit(settings.openai_base_url).netloc
        ):
            key = self.secret("OPENAI_API_KEY")
        if not key and "api.openai.com" in settings.transcribe_base_url:
            raise ConfigurationError(
                "TRANSCRIBE_MODEL transcribes on api.openai.com, which needs TRANSCRIBE_API_KEY or OPENAI_API_KEY"
                " (or set TRANSCRIBE_BASE_URL to a server that needs no key)"
            )
        return key

    @cached_property
    def projects(self) -> dict[str, dict[str, Any]]:
        """PROJECTS_FILE, read on first use: the reply stage reports a bad file; stage 1, which reads only
        the hand-off text there, falls back to HANDOFF_REPLY_TEXT (a bad file never stops the intake)."""
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

    def secret(self, name: str, refresh: bool = False) -> str | None:
        """The secret `name` (one of ports.SECRET_VARIABLES): the environment's value, else the backend's
        (`refresh`: the cached one was refused, read it again)."""
        return getattr(self.settings, name.lower()) or self.secrets.get(name, refresh)

    def twilio_auth_token(self, refresh: bool = False) -> str | None:
        """The token Twilio signs with: TWILIO_AUTH_TOKEN, else the backend's own source."""
        return self.secret("TWILIO_AUTH_TOKEN", refresh)

    def twilio_account_sid(self) -> str | None:
        return self.secret("TWILIO_ACCOUNT_SID")


def build_runtime(settings: Settings) -> Components:
    if settings.backend == "sqlite":
        from .adapters.sqlite import (
            Database,
            LocalSecrets,
            SqliteConversationStore,
            SqliteMessageQueue,
            SqliteOutbox,
        )
        from .adapters.sqlite.operators import SqliteOperators

        database = Database(settings.sqlite_path, settings.sqlite_busy_timeout_ms)
        return Components(
            settings=settings,
            store=SqliteConversationStore(database),
            queue=SqliteMessageQueue(database),
            metrics=Metrics(),
            secrets=LocalSecrets(database),
            outbox=SqliteOutbox(database),
            make_operators=lambda: SqliteOperators(database),
            close=database.close,
        )
    from .adapters.aws import DynamoConversationStore, SecretsManagerSecrets, SqsMessageQueue
    from .adapters.aws.outbox import SqsOutbox

    if not (settings.conversations_table and settings.messages_table):
        raise ConfigurationError("REPLIES_BACKEND=aws needs CONVERSATIONS_TABLE and MESSAGES_TABLE")
    queue = SqsMessageQueue(settings.queue_urls)
    return Components(
        settings=settings,
        store=DynamoConversationStore(
            settings.conversations_table, settings.messages_table, settings.message_retention_days
        ),
        queue=queue,
        metrics=Metrics(emf_namespace="RepliesEngine"),
        secrets=SecretsManagerSecrets(settings.twilio_secret_name, settings.engine_secret_name),
        outbox=SqsOutbox(queue),
        make_operators=lambda: _dynamo_operators(settings),
    )


def _dynamo_operators(settings: Settings) -> OperatorStore:
    from .adapters.aws.operators import DynamoOperators

    if not settings.operators_table:
        raise ConfigurationError("REPLIES_BACKEND=aws needs OPERATORS_TABLE for the operators' accounts")
    return DynamoOperators(settings.operators_table)


def _no_operators() -> OperatorStore:
    raise ConfigurationError("this runtime was built without an operators' store")


_runtime: Components | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Components:
    """The process's runtime, built from the environment on first call."""
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                settings = Settings.from_env()
                configure_logging(settings.log_level, settings.log_personal_data)
                if settings.log_personal_data:
                    logger.warning(
                        "LOG_PERSONAL_DATA=on: log lines carry what people wrote and their addresses"
                    )
                if settings.verify_signatures == "off":
                    logger.warning("VERIFY_SIGNATURES=off: webhook requests are accepted unsigned")
                elif not settings.email_auth:
                    logger.warning("EMAIL_AUTH=off: the email routes accept unauthenticated requests")
                elif settings.backend == "aws" and not (
                    settings.email_webhook_token or settings.engine_secret_name
                ):
                    logger.error(
                        "neither EMAIL_WEBHOOK_TOKEN nor ENGINE_SECRET_NAME is set: the email routes refuse"
                        " every request (CONFIGURATION_ERROR)"
                    )
                _runtime = build_runtime(settings)
    return _runtime


def reset_runtime() -> None:
    """Forget the runtime so the next call reads the environment again (tests, CLI)."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            _runtime.close()
        _runtime = None
