"""Structured JSON logs and counters (docs/design.md §6).

Log lines carry correlation fields through `extra=`: `conversation_id`, `message_sid`, `batch_id`, …
Counters are kept in memory here; the AWS backend emits the same names as CloudWatch EMF.

Logs carry no personal data by default (log archives are kept long and read by many): every line
passes `redact`, which masks phone numbers and email addresses wherever they appear (the message, each
field, a traceback) and replaces the fields that hold what people wrote by their length.
`LOG_PERSONAL_DATA=on` keeps them, for debugging, with a warning at start.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import unquote

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def mask(address: str) -> str:
    """An address as logs may show it: enough to tell lines about one person apart from another's, not
    enough to reach them (`+4915112345678` → `+49151•••678`, `zoe@example.org` → `z•••@example.org`)."""
    local, at, domain = address.rpartition("@")
    if at:
        return f"{local[:1]}•••@{domain}"
    return f"{address[:6]}•••{address[-3:]}" if len(address) > 9 else "•••"


# Where people's addresses hide in free text: an email address; a phone number in E.164 (`+49…`,
# `whatsapp:+49…`) or as WhatsApp's bare `WaId` (10 to 15 digits standing alone); a WhatsApp BSUID.
_ADDRESS = re.compile(
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+|\+\d{7,15}\b|(?<![\w+.:-])\d{10,15}(?![\w.:-])"
    r"|\b[A-Z]{2}\.(?:ENT\.)?\d{6,}\b"
)
# Fields that hold what people wrote (or what was written to them, or a reason given in words by the
# AI or an operator): logged as their length only.
CONTENT_FIELDS = frozenset(
    {"body", "content", "text", "texts", "raw_text", "transcript", "subject", "profile_name", "caption",
     "handoff_reason"}
)  # fmt: skip


def redact(value: object) -> object:
    """`value` (a log line's field) as JSON writes it, with every address masked and people's words
    left out; what JSON cannot hold is taken as its text, as `json.dumps(default=str)` would."""
    if isinstance(value, str):  # a URL's path may carry one percent-encoded (`/api/people/%2B49…`)
        return _ADDRESS.sub(lambda m: mask(m[0]), unquote(value) if "%" in value else value)
    if isinstance(value, dict):
        return {
            str(k): f"[{_length(v)} characters]" if k in CONTENT_FIELDS else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def _length(value: object) -> int:
    return len(value) if isinstance(value, str) else len(json.dumps(value, default=str, ensure_ascii=False))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then every `extra` field; redacted
    unless `personal_data`."""

    def __init__(self, personal_data: bool = False) -> None:
        super().__init__()
        self.personal_data = personal_data

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}
        details = {"message": record.getMessage(), **fields}
        if record.exc_info:
            details["exception"] = self.formatException(record.exc_info)
        if not self.personal_data:
            details = cast(dict[str, Any], redact(details))
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            **details,
        }
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", personal_data: bool = False) -> None:
    """JSON lines on stderr for the package's loggers; idempotent (Lambda reuses the process)."""
    logger = logging.getLogger("replies_engine")
    logger.setLevel(level)
    handler = next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        logger.addHandler(handler)
        logger.propagate = False  # Lambda's root handler would print every line twice
    handler.setFormatter(JsonFormatter(personal_data))


class _StderrHandler(logging.Handler):
    """Writes to the current sys.stderr, not the one at start-up (redirections, test capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


class Metrics:
    """Counters by metric name, thread-safe; `snapshot()` for tests, the CLI and benchmarks.

    With `emf_namespace` (in Lambda), each value is also written to stdout as one CloudWatch Embedded
    Metric Format line, which CloudWatch Logs turns into a metric without an API call.
    """

    def __init__(self, emf_namespace: str | None = None) -> None:
        self._counts: dict[str, float] = {}  # ints stay ints: 0 + 1 is 1
        self._lock = threading.Lock()
        self._log = logging.getLogger("replies_engine.metrics")
        self.emf_namespace = emf_namespace

    def add(self, name: str, value: float = 1, **dimensions: str) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + value
        self._log.debug("metric", extra={"metric": name, "value": value, **dimensions})
        if self.emf_namespace:
            unit = "Seconds" if name.endswith("Seconds") else "Count"
            emf = {
                "_aws": {
                    "Timestamp": int(time.time() * 1000),
                    "CloudWatchMetrics": [
                        {
                            "Namespace": self.emf_namespace,
                            "Dimensions": [["Service"]],
                            "Metrics": [{"Name": name, "Unit": unit}],
                        }
                    ],
                },
                "Service": "replies-engine",
                name: value,
                **dimensions,
            }
            sys.stdout.write(json.dumps(emf) + "\n")

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._counts)
