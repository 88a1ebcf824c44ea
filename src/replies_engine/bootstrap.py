"""The composition root: settings → adapters, built once per process on first use (a Lambda container
pays for it on its first request, not at import)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from .config import ConfigurationError, Settings
from .observability import Metrics, configure_logging
from .ports import ConversationStore, MessageQueue

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    store: ConversationStore
    queue: MessageQueue
    metrics: Metrics
    auth_token_source: Callable[[], str | None]
    close: Callable[[], None] = field(default=lambda: None)

    def twilio_auth_token(self) -> str | None:
        """The token Twilio signs with: TWILIO_AUTH_TOKEN, else the backend's own source."""
        return self.settings.twilio_auth_token or self.auth_token_source()


def build_runtime(settings: Settings) -> Runtime:
    if settings.backend == "sqlite":
        from .adapters.sqlite import Database, SqliteConversationStore, SqliteMessageQueue

        database = Database(settings.sqlite_path, settings.sqlite_busy_timeout_ms)
        return Runtime(
            settings=settings,
            store=SqliteConversationStore(database),
            queue=SqliteMessageQueue(database),
            metrics=Metrics(),
            auth_token_source=cache(database.local_auth_token),
            close=database.close,
        )
    raise ConfigurationError(f"REPLIES_BACKEND={settings.backend} is not available in this version")


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
                _runtime = build_runtime(settings)
    return _runtime


def reset_runtime() -> None:
    """Forget the runtime so the next call reads the environment again (tests, CLI)."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            _runtime.close()
        _runtime = None
