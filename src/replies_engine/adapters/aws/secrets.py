"""Twilio credentials from Secrets Manager: `/replies-engine/{EnvironmentName}/twilio`, a JSON
`{"account_sid": …, "auth_token": …}`, fetched once per container."""

from __future__ import annotations

import json
from functools import cache

from ...config import ConfigurationError
from ...ports import StoreError, TransientStoreError
from .clients import client, translated_errors


@cache
def twilio_credentials(secret_name: str) -> dict[str, str]:
    with translated_errors(StoreError, TransientStoreError):
        secret = client("secretsmanager").get_secret_value(SecretId=secret_name)["SecretString"]
    try:
        credentials = json.loads(secret)
    except json.JSONDecodeError:
        raise ConfigurationError(f"secret {secret_name} is not JSON") from None
    if not isinstance(credentials, dict) or not credentials.get("auth_token"):
        raise ConfigurationError(f'secret {secret_name} must be {{"account_sid": …, "auth_token": …}}')
    return credentials
