"""Settings from the environment (docs/design.md §5), read once on first use, never at import."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from urllib.parse import urlsplit

from .batching_modes import BatchingMode, Debounce, Delay


class ConfigurationError(Exception):
    """The environment asks for something that cannot work; the message says which variable."""


SQS_MAX_DELAY_SECONDS = 900


@dataclass(frozen=True)
class Settings:
    backend: str = "sqlite"
    sqlite_path: str = ""  # REPLIES_SQLITE_PATH, else the user's data directory (`_default_database`)
    sqlite_busy_timeout_ms: int = 2000
    conversations_table: str | None = None
    messages_table: str | None = None
    operators_table: str | None = None
    queue_urls: Mapping[str, str] = field(default_factory=dict)
    batch_delay_seconds: int = 10
    requeue_delay_seconds: int = 15
    max_retry_attempts: int = 3
    lock_timeout_seconds: int = 300
    twilio_auth_token: str | None = None
    twilio_secret_name: str | None = None
    twilio_webhook_signing_keys: str | None = None  # Twilio's shared keys (SHA-256), comma-separated
    engine_secret_name: str | None = (
        None  # AWS: the other secrets (ports.SECRET_VARIABLES), as one JSON object
    )
    verify_signatures: str = "enforce"
    public_base_url: str | None = None
    email_webhook_token: str | None = None
    email_auth: bool = True  # off: the email routes take unauthenticated requests (local experiments)
    mailgun_signing_key: str | None = None  # Mailgun's webhook signing key (`/email/mailgun`)
    smtp_url: str | None = None  # email replies go out through this SMTP server (else the outbox)
    email_sender: str = "outbox"  # outbox, smtp (SMTP_URL) or ses (AWS)
    ses_configuration_set: str | None = None  # AWS: SES tells its bounces and complaints through it
    inbound_mail_bucket: str | None = None  # AWS: where SES's receipt rule stores inbound mail
    inbound_mail_prefix: str = ""  # … under this key prefix, then SES's message id
    locked_reply_text: str = "We're still working on your previous message and will answer shortly."
    locked_policy: str = "reply"
    handoff_reply_text: str = "Thanks for your message. A colleague will answer you here shortly."
    help_reply_text: str | None = None  # the answer to HELP/INFO; unset: HELP is a message like any
    whatsapp_template_content_sid: str | None = None  # sent instead when WhatsApp's 24-hour window closed
    max_reply_parts: int = 10  # a long reply goes out in at most this many parts
    operator_token: str | None = None  # the bootstrap admin credential of the inbox and its API
    operator_session_hours: float = 12  # a page session lasts this long
    handoff_webhook_url: str | None = None  # told when a person waits for a human (JSON, signed)
    handoff_webhook_secret: str | None = None  # signs it
    handoff_topic_arn: str | None = None  # AWS: an SNS topic told the same
    handoff_auto_return_hours: float = 0  # a human silent this long hands the conversation back; 0: never
    honor_hand_off_to_human: bool = False
    log_level: str = "INFO"
    message_retention_days: int = 0  # messages older than this are deleted; 0: kept
    log_personal_data: bool = False  # on: log lines keep what people wrote and their addresses (debugging)
    batching_mode: str = "debounce"
    quiet_seconds: int = 3
    max_wait_seconds: int = 30
    max_batch_messages: int = 20
    supersede: str = "regenerate"
    speculate: bool = False  # debounce: the AI starts at the first message, the reply is held for the quiet
    twilio_account_sid: str | None = None
    responder: str = "local"
    local_responder_delay_seconds: float = 0.0
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: str | None = None
    openai_model: str = "gpt-4o-mini"
    agent_url: str | None = None  # RESPONDER=http: your own agent
    agent_secret: str | None = None  # signs what is POSTed to it
    responder_timeout_seconds: float = 15.0  # per attempt; attempts × this stays below the function timeout
    responder_attempts: int = 3
    # what the AI reads
    transcribe_model: str | None = None  # voice notes transcribed by this model; unset: not transcribed
    transcribe_base_url: str = "https://api.openai.com/v1"
    transcribe_api_key: str | None = None  # default: OPENAI_API_KEY, when it is the same server
    media_wait_seconds: int = 30  # the batch's files are read within this
    vision: bool = False  # images given to the chat model, which must be able to see
    max_media_bytes: int = 16_000_000  # WhatsApp's own limit for audio and video
    max_media_items: int = 10  # files read per batch
    projects_file: str | None = None  # JSON: per project, `ai_instructions` and `max_ai_turns_per_day`
    max_ai_turns_per_day: int = 100  # per conversation (UTC days); past it, a human; 0: no cap
    # the local engine's workers
    visibility_timeout_seconds: int = 180
    batch_window_seconds: float = 0.5
    sweep_interval_seconds: int = 60
    batch_concurrency: int = 4  # per batch queue: stage 2 is short database work
    reply_concurrency: int = 64  # AI calls in flight: they wait seconds on a remote model, not the CPU

    @cached_property
    def batching(self) -> BatchingMode:
        """The batching mode's object: what the stages ask, instead of comparing BATCHING_MODE."""
        if self.batching_mode == "delay":
            return Delay(self.batch_delay_seconds, reply_when_locked=self.locked_policy == "reply")
        return Debounce(
            self.quiet_seconds, self.max_wait_seconds, self.max_batch_messages, self.supersede, self.speculate
        )

    @property
    def twilio_account_configured(self) -> bool:
        """A real Twilio account: replies go through its REST API instead of the outbox."""
        return bool(self.twilio_secret_name or (self.twilio_account_sid and self.twilio_auth_token))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: os.environ); a bad value raises ConfigurationError."""
        env = _Env(os.environ if environ is None else environ)
        settings = cls(
            backend=env.choice("REPLIES_BACKEND", ("sqlite", "aws"), "sqlite"),
            sqlite_path=env.text("REPLIES_SQLITE_PATH") or _default_database(env),
            sqlite_busy_timeout_ms=env.integer("REPLIES_SQLITE_BUSY_TIMEOUT_MS", 2000, 0, 600_000),
            conversations_table=env.text("CONVERSATIONS_TABLE"),
            messages_table=env.text("MESSAGES_TABLE"),
            operators_table=env.text("OPERATORS_TABLE"),
            queue_urls={
                name: url
                for queue in ("whatsapp", "sms", "email", "handoff", "ai", "outbox")
                for name, variable in (
                    (queue, f"{queue.upper()}_QUEUE_URL"),
                    (f"{queue}-dlq", f"{queue.upper()}_DLQ_URL"),
                )
                if (url := env.text(variable))
            },
            batch_delay_seconds=env.integer("BATCH_DELAY_SECONDS", 10, 0, SQS_MAX_DELAY_SECONDS),
            requeue_delay_seconds=env.integer("REQUEUE_DELAY_SECONDS", 15, 0, SQS_MAX_DELAY_SECONDS),
            max_retry_attempts=env.integer("MAX_RETRY_ATTEMPTS", 3, 0, 100),
            lock_timeout_seconds=env.integer("LOCK_TIMEOUT_SECONDS", 300, 1, 86_400),
            twilio_auth_token=env.text("TWILIO_AUTH_TOKEN"),
            twilio_secret_name=env.text("TWILIO_SECRET_NAME"),
            twilio_webhook_signing_keys=env.text("TWILIO_WEBHOOK_SIGNING_KEYS"),
            engine_secret_name=env.text("ENGINE_SECRET_NAME"),
            verify_signatures=env.choice("VERIFY_SIGNATURES", ("enforce", "report", "off"), "enforce"),
            public_base_url=(env.text("PUBLIC_BASE_URL") or "").rstrip("/") or None,
            email_webhook_token=env.text("EMAIL_WEBHOOK_TOKEN"),
            email_auth=env.choice("EMAIL_AUTH", ("on", "off"), "on") == "on",
            mailgun_signing_key=env.text("MAILGUN_SIGNING_KEY"),
            smtp_url=env.text("SMTP_URL"),
            ses_configuration_set=env.text("SES_CONFIGURATION_SET"),
            inbound_mail_bucket=env.text("INBOUND_MAIL_BUCKET"),
            inbound_mail_prefix=env.text("INBOUND_MAIL_PREFIX") or "",
            email_sender=env.choice(
                "EMAIL_SENDER", ("outbox", "smtp", "ses"), "smtp" if env.text("SMTP_URL") else "outbox"
            ),
            locked_reply_text=env.text("LOCKED_REPLY_TEXT") or cls.locked_reply_text,
            locked_policy=env.choice("LOCKED_POLICY", ("reply", "defer"), "reply"),
            handoff_reply_text=env.text("HANDOFF_REPLY_TEXT") or cls.handoff_reply_text,
            help_reply_text=env.text("HELP_REPLY_TEXT"),
            whatsapp_template_content_sid=env.text("WHATSAPP_TEMPLATE_CONTENT_SID"),
            max_reply_parts=env.integer("MAX_REPLY_PARTS", 10, 1, 50),
            operator_token=env.text("OPERATOR_TOKEN"),
            operator_session_hours=env.number("OPERATOR_SESSION_HOURS", 12, 0.1, 24 * 30),
            handoff_webhook_url=env.text("HANDOFF_WEBHOOK_URL"),
            handoff_webhook_secret=env.text("HANDOFF_WEBHOOK_SECRET"),
            handoff_topic_arn=env.text("HANDOFF_TOPIC_ARN"),
            handoff_auto_return_hours=env.number("HANDOFF_AUTO_RETURN_HOURS", 0, 0, 24 * 365),
            honor_hand_off_to_human=env.boolean("HONOR_HAND_OFF_TO_HUMAN", False),
            log_level=env.choice("LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", upper=True),
            message_retention_days=env.integer("MESSAGE_RETENTION_DAYS", 0, 0, 36_500),
            log_personal_data=env.choice("LOG_PERSONAL_DATA", ("on", "off"), "off") == "on",
            batching_mode=env.choice("BATCHING_MODE", ("delay", "debounce"), "debounce"),
            quiet_seconds=env.integer("QUIET_SECONDS", 3, 0, SQS_MAX_DELAY_SECONDS),
            max_wait_seconds=env.integer("MAX_WAIT_SECONDS", 30, 0, 86_400),
            max_batch_messages=env.integer("MAX_BATCH_MESSAGES", 20, 1, 10_000),
            supersede=env.choice("SUPERSEDE", ("regenerate", "drop"), "regenerate"),
            speculate=env.choice("SPECULATE", ("on", "off"), "off") == "on",
            twilio_account_sid=env.text("TWILIO_ACCOUNT_SID"),
            responder=env.choice("RESPONDER", ("local", "openai", "http"), "local"),
            local_responder_delay_seconds=env.number("LOCAL_RESPONDER_DELAY_SECONDS", 0.0, 0, 600),
            openai_base_url=(env.text("OPENAI_BASE_URL") or cls.openai_base_url).rstrip("/"),
            openai_api_key=env.text("OPENAI_API_KEY"),
            openai_model=env.text("OPENAI_MODEL") or cls.openai_model,
            agent_url=env.text("AGENT_URL"),
            agent_secret=env.text("AGENT_SECRET"),
            responder_timeout_seconds=env.number("RESPONDER_TIMEOUT_SECONDS", 15.0, 1, 300),
            responder_attempts=env.integer("RESPONDER_ATTEMPTS", 3, 1, 10),
            transcribe_model=env.text("TRANSCRIBE_MODEL"),
            transcribe_base_url=(
                env.text("TRANSCRIBE_BASE_URL") or env.text("OPENAI_BASE_URL") or cls.transcribe_base_url
            ).rstrip("/"),
            transcribe_api_key=env.text("TRANSCRIBE_API_KEY"),
            media_wait_seconds=env.integer("MEDIA_WAIT_SECONDS", 30, 1, 600),
            vision=env.choice("VISION", ("on", "off"), "off") == "on",
            max_media_bytes=env.integer("MAX_MEDIA_BYTES", 16_000_000, 1, 100_000_000),
            max_media_items=env.integer("MAX_MEDIA_ITEMS", 10, 0, 100),
            projects_file=env.text("PROJECTS_FILE"),
            max_ai_turns_per_day=env.integer("MAX_AI_TURNS_PER_DAY", 100, 0, 1_000_000),
            visibility_timeout_seconds=env.integer("REPLIES_VISIBILITY_TIMEOUT_SECONDS", 180, 1, 43_200),
            batch_window_seconds=env.number("BATCH_WINDOW_SECONDS", 0.5, 0, 300),
            sweep_interval_seconds=env.integer("SWEEP_INTERVAL_SECONDS", 60, 1, 86_400),
            batch_concurrency=env.integer("BATCH_CONCURRENCY", 4, 1, 256),
            reply_concurrency=env.integer("REPLY_CONCURRENCY", 64, 1, 1024),
        )
        _check_batching(settings)
        if settings.handoff_webhook_url and not _is_http_url(settings.handoff_webhook_url):
            raise ConfigurationError(
                f"HANDOFF_WEBHOOK_URL={settings.handoff_webhook_url!r} is not an http(s) URL"
            )
        if settings.responder == "http":
            if not settings.agent_url:
                raise ConfigurationError("AGENT_URL is required with RESPONDER=http")
            if not _is_http_url(settings.agent_url):
                raise ConfigurationError(f"AGENT_URL={settings.agent_url!r} is not an http(s) URL")
        return settings  # the secrets' checks are the runtime's: in AWS they come from Secrets Manager


def _default_database(env: _Env) -> str:
    """The embedded database, the same wherever a command runs from: in the user's data directory
    ($XDG_DATA_HOME, else ~/.local/share)."""
    home = env.text("HOME") or os.path.expanduser("~")
    data = env.text("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    return os.path.join(data, "replies-engine", "replies-engine.db")


# The settings each mode alone reads: set to another value than the default in the other mode, a warning.
_MODE_SETTINGS = {
    "delay": ("batch_delay_seconds",),
    "debounce": ("quiet_seconds", "max_wait_seconds", "max_batch_messages"),
}


def _check_batching(settings: Settings) -> None:
    """A setting that does nothing in the chosen BATCHING_MODE is refused when it would change what
    happens to a message, and warned about when it would change only a time or a cap."""
    if settings.batching_mode == "debounce" and settings.locked_policy == "defer":
        raise ConfigurationError(
            "LOCKED_POLICY=defer does nothing with BATCHING_MODE=debounce, which keeps every message of a"
            " locked conversation for the next batch: unset LOCKED_POLICY, or use BATCHING_MODE=delay"
        )
    if settings.batching_mode == "delay" and settings.supersede == "drop":
        raise ConfigurationError(
            "SUPERSEDE=drop does nothing with BATCHING_MODE=delay (a reply is superseded only by messages"
            " pending in debounce mode): unset SUPERSEDE, or use BATCHING_MODE=debounce"
        )
    if settings.speculate and (settings.batching_mode != "debounce" or settings.supersede != "regenerate"):
        raise ConfigurationError(
            "SPECULATE=on needs BATCHING_MODE=debounce and SUPERSEDE=regenerate: the AI starts at the first"
            " message, and what comes while it thinks is answered again with it"
        )
    for mode, names in _MODE_SETTINGS.items():
        ignored = [n.upper() for n in names if getattr(settings, n) != getattr(Settings, n)]
        if mode != settings.batching_mode and ignored:
            logging.getLogger(__name__).warning(
                "%s does nothing with BATCHING_MODE=%s", ", ".join(ignored), settings.batching_mode
            )


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed [ in the host
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class _Env:
    """Typed reads of environment variables; empty counts as unset."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigurationError(f"{name}={raw!r} is not a whole number") from None
        if not low <= value <= high:
            raise ConfigurationError(f"{name}={value} is out of range [{low}, {high}]")
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigurationError(f"{name}={raw!r} is not a number") from None
        if not low <= value <= high:
            raise ConfigurationError(f"{name}={value} is out of range [{low}, {high}]")
        return value

    def choice(self, name: str, allowed: tuple[str, ...], default: str, upper: bool = False) -> str:
        raw = self.text(name)
        if raw is None:
            return default
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            raise ConfigurationError(f"{name}={raw!r} is not one of {', '.join(allowed)}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigurationError(f"{name}={raw!r} is not a boolean (true/false)")
