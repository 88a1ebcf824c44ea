"""Time in one place: stage 1 stamps `received_at` with it, stores compare lock ages with it."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime


def now() -> float:
    """Unix seconds."""
    return time.time()


def iso(timestamp: float | None = None) -> str:
    """ISO-8601 UTC with microseconds, `2026-11-24T20:15:03.123456Z`: sorts as text."""
    moment = datetime.fromtimestamp(now() if timestamp is None else timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", re.ASCII)


def is_stamp(value: object) -> bool:
    """Is `value` a time as `iso` writes it (one that sorts as text with the others)?"""
    if not isinstance(value, str) or not _STAMP.fullmatch(value):
        return False
    try:
        parse_iso(value)
    except ValueError:  # 2026-13-45…
        return False
    return True


def parse_iso(text: str) -> float:
    """Unix seconds from an ISO-8601 string (`Z` or an offset; naive means UTC)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
