"""The Lambda entry points (DESIGN.md §2). Thin: each hands the event to its stage.

Importing this module reads no configuration and touches no backend; the first call does.
"""

from __future__ import annotations

from typing import Any


def webhook_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Stage 1: API Gateway proxy event → API Gateway proxy response."""
    from .webhook.pipeline import handle_webhook

    return handle_webhook(event)


def batch_processor(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Stage 2: SQS event from a batch queue → partial batch failures."""
    raise NotImplementedError("stage 2 (batch processor) is issue 3 and not built yet")


def reply_sender(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Stage 3: SQS event from the AI queue → partial batch failures."""
    raise NotImplementedError("stage 3 (reply sender) is issue 3 and not built yet")


def stalled_sweeper(event: dict[str, Any], context: Any) -> dict[str, int]:
    """Scheduled: reset locks older than LOCK_TIMEOUT_SECONDS → {"checked": n, "reset": n}."""
    raise NotImplementedError("the stalled-lock sweeper is issue 3 and not built yet")
