"""The engine's secrets from Secrets Manager, never from the functions' environment:

- the Twilio secret (TWILIO_SECRET_NAME, `/replies-engine/{EnvironmentName}/twilio`): a JSON
  `{"account_sid": …, "auth_token": …}`, which the operator creates;
- the engine secret (ENGINE_SECRET_NAME, `/replies-engine/{EnvironmentName}/engine`): a JSON object of
  the other secrets by their variable names (`EMAIL_WEBHOOK_TOKEN`, `OPENAI_API_KEY`, …), which the
  stack creates with a generated email webhook token.

Each is read on first use and kept for TTL_SECONDS, so a rotated value is seen within minutes; when a
provider refuses the cached value (a rotated Twilio token), `refresh` reads it again at once, at most
every MIN_REFRESH_SECONDS (forged requests must not turn into a Secrets Manager bill).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ...config import ConfigurationError
from ...ports import SECRET_VARIABLES, BackendError, StoreError, TransientStoreError
from .clients import client, translated_errors

logger = logging.getLogger(__name__)

TTL_SECONDS = 300
MIN_REFRESH_SECONDS = 10
RETRY_SECONDS = 30  # Secrets Manager failing: the copy we have serves this long before the next try
_TWILIO_KEYS = {"TWILIO_ACCOUNT_SID": "account_sid", "TWILIO_AUTH_TOKEN": "auth_token"}


def secrets_client() -> Any:
    """Secrets Manager's client: one attempt (2 s to connect, 5 to read), so that a webhook that must
    read a secret still answers within its 10 s."""
    return client("secretsmanager", attempts=1)


class SecretsManagerSecrets:
    def __init__(
        self,
        twilio_secret_name: str | None,
        engine_secret_name: str | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.twilio_secret_name = twilio_secret_name
        self.engine_secret_name = engine_secret_name
        self.clock = clock
        self._read: dict[str, tuple[float, dict[str, str]]] = {}  # secret name → (read at, values)
        self._lock = threading.Lock()

    def get(self, name: str, refresh: bool = False) -> str | None:
        if name in _TWILIO_KEYS:
            secret_name, key = self.twilio_secret_name, _TWILIO_KEYS[name]
        else:
            secret_name, key = self.engine_secret_name, name
        if not secret_name:
            return None
        return self._values(secret_name, refresh).get(key) or None

    def _values(self, secret_name: str, refresh: bool) -> dict[str, str]:
        with self._lock:  # one read for the threads that all found the cache stale
            read_at, values = self._read.get(secret_name, (None, {}))
            age = None if read_at is None else self.clock() - read_at
            if age is not None and age < (MIN_REFRESH_SECONDS if refresh else TTL_SECONDS):
                return values
            try:
                values = self._fetch(secret_name)
            except (BackendError, ConfigurationError):
                if age is None:
                    raise
                # unreachable, or mid-edit: the copy we have beats a refusal, and is not asked for
                # again at every request meanwhile
                logger.warning(
                    "cannot read secret %s again; using the copy read %.0f s ago", secret_name, age
                )
                self._read[secret_name] = (self.clock() - TTL_SECONDS + RETRY_SECONDS, values)
                return values
            self._read[secret_name] = (self.clock(), values)
            return values

    def _fetch(self, secret_name: str) -> dict[str, str]:
        with translated_errors(StoreError, TransientStoreError):
            text = secrets_client().get_secret_value(SecretId=secret_name)["SecretString"]
        try:
            values = json.loads(text)
        except json.JSONDecodeError:
            raise ConfigurationError(f"secret {secret_name} is not JSON") from None
        if not isinstance(values, dict):
            raise ConfigurationError(f"secret {secret_name} is not a JSON object")
        if secret_name == self.twilio_secret_name:
            if not values.get("auth_token"):
                raise ConfigurationError(
                    f'secret {secret_name} must be {{"account_sid": …, "auth_token": …}}'
                )
            return {k: str(v) for k, v in values.items() if k in _TWILIO_KEYS.values()}
        unknown = sorted(set(values) - set(SECRET_VARIABLES))
        if unknown:  # a typo must not pass silently, nor stop the webhook taking messages
            logger.error(
                "secret %s holds keys the engine does not read: %s (expected some of %s)",
                secret_name,
                ", ".join(unknown),
                ", ".join(SECRET_VARIABLES),
            )
        return {k: str(v) for k, v in values.items() if k in SECRET_VARIABLES and v not in (None, "")}
