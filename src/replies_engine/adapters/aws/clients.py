"""boto3 clients: one per service per container, made on first use (a cold start pays only for what
it uses), with short timeouts and few retries so that stage 1 still answers Twilio within its 15 s."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from ...config import ConfigurationError
from ...ports import BackendError, TransientBackendError

_lock = threading.Lock()

# Throttling and server-side faults: retrying later helps.
TRANSIENT_ERROR_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "RequestThrottled",
        "InternalServerError",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "TransactionConflictException",
        "KMS.ThrottlingException",
    }
)
_MISSING_RESOURCE_CODES = frozenset(
    {"ResourceNotFoundException", "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
)


@cache
def client(service: str, attempts: int = 3) -> Any:
    """The container's client for `service`; endpoints from the environment (AWS_ENDPOINT_URL…).
    `attempts` 1 for a call that must not be repeated blindly (a send: it may have gone)."""
    import boto3
    from botocore.config import Config

    from .tracing import trace

    config = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": attempts})
    with _lock:  # boto3's sessions are not thread-safe; their clients are
        made = boto3.session.Session().client(service, config=config)
    trace(made)
    return made


def error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    return (response or {}).get("Error", {}).get("Code")


@contextmanager
def translated_errors(error: type[BackendError], transient: type[TransientBackendError]) -> Iterator[None]:
    """botocore's errors in the ports' vocabulary: throttling, timeouts and 5xx → transient."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        NoCredentialsError,
        NoRegionError,
        ReadTimeoutError,
    )

    try:
        yield
    except ClientError as exc:
        code = error_code(exc)
        if code in TRANSIENT_ERROR_CODES:
            raise transient(f"{code}: {exc}") from exc
        if code in _MISSING_RESOURCE_CODES:
            raise ConfigurationError(f"{code}: {exc}") from exc
        raise error(f"{code}: {exc}") from exc
    except (NoCredentialsError, NoRegionError) as exc:
        raise ConfigurationError(str(exc)) from exc
    except (ConnectionError, ReadTimeoutError) as exc:  # timeouts and refused connections included
        raise transient(str(exc)) from exc
    except BotoCoreError as exc:
        raise error(str(exc)) from exc
