"""Time in one place: stage 1 stamps `received_at` with it, stores compare lock ages with it."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> float:
    """Unix seconds."""
    return time.time()


def iso(timestamp: float | None = None) -> str:
    """ISO-8601 UTC with microseconds, `2026-11-24T20:15:03.123456Z`: sorts as text."""
    moment = datetime.fromtimestamp(now() if timestamp is None else timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> float:
    """Unix seconds from an ISO-8601 string (`Z` or an offset; naive means UTC)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
