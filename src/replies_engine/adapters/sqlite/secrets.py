"""The embedded engine's own credentials: a Twilio auth token and an email webhook token, made on first
use and kept in the database, so that every door has a credential even on a laptop (`serve` prints
them; `replies-engine send` signs with them). The environment's values, when set, go first."""

from __future__ import annotations

from .database import Database

_MADE_HERE = {"TWILIO_AUTH_TOKEN": "twilio_auth_token", "EMAIL_WEBHOOK_TOKEN": "email_webhook_token"}


class LocalSecrets:
    def __init__(self, database: Database) -> None:
        self.database = database
        self._made: dict[str, str] = {}

    def get(self, name: str, refresh: bool = False) -> str | None:
        key = _MADE_HERE.get(name)
        if key is None:
            return None
        if key not in self._made:  # never rotated: one read per process
            self._made[key] = self.database.local_secret(key)
        return self._made[key]
