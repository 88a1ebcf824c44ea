"""How replies-engine signs what it POSTs to others (your agent, a hand-off notice to your webhook), and
how they check it: HMAC-SHA256 of `"{timestamp}."` + the body, in X-Replies-Timestamp and
X-Replies-Signature."""

from __future__ import annotations

import hashlib
import hmac

from . import clock

# The replay window. Every attempt of one call is signed with its first attempt's timestamp: with the
# default timeouts they span at most 100 s (RetryingHttpClient.max_seconds).
SIGNATURE_TOLERANCE_SECONDS = 300


def sign(secret: str, timestamp: str | int, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 with `secret` of `"{timestamp}."` + the body's bytes."""
    signed = f"{timestamp}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    timestamp: str | int,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance_seconds: float = SIGNATURE_TOLERANCE_SECONDS,
) -> bool:
    """Whether a request came from replies-engine (to your agent, or a hand-off notice to your webhook):
    `timestamp` and `signature` are its X-Replies-Timestamp and X-Replies-Signature, `body` the raw
    bytes as received. A timestamp
    further than `tolerance_seconds` from `now` (default: the clock) is refused, so a captured request
    cannot be replayed later."""
    try:
        sent_at = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((clock.now() if now is None else now) - sent_at) > tolerance_seconds:
        return False
    expected = sign(secret, timestamp, body).encode()
    return hmac.compare_digest(expected, (signature or "").encode())
