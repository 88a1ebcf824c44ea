"""Structured JSON logs and counters (docs/design.md §6).

Log lines carry correlation fields through `extra=`: `conversation_id`, `message_sid`, `batch_id`, …
Counters are kept in memory here; the AWS backend emits the same names as CloudWatch EMF.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def mask(address: str) -> str:
    """An address as logs may show it: enough to tell two apart, not enough to reach the person
    (`+4915112345678` → `+49…678`, `zoe@example.org` → `z…@example.org`)."""
    local, at, domain = address.rpartition("@")
    if at:
        return f"{local[:1]}…@{domain}"
    return f"{address[:3]}…{address[-3:]}" if len(address) > 8 else "…"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then every `extra` field."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((k, v) for k, v in vars(record).items() if k not in _STANDARD_ATTRS)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the package's loggers; idempotent (Lambda reuses the process)."""
    logger = logging.getLogger("replies_engine")
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.propagate = False  # Lambda's root handler would print every line twice


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
