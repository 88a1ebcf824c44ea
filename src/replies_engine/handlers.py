"""The Lambda entry points (docs/design.md §2): the four stages', stage 1's for mail SES receives, the
hand-off notifier's, the operators' inbox's and SES's feedback's. Thin: each hands the event to its stage.

Importing this module reads no configuration and touches no backend; the first call does.
"""

from __future__ import annotations

from typing import Any


def webhook_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Stage 1: API Gateway proxy event → API Gateway proxy response."""
    from .bootstrap import get_runtime
    from .webhook.pipeline import handle_webhook

    return handle_webhook(event, get_runtime)


def batch_processor(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Stage 2: SQS event from a batch queue → partial batch failures."""
    from .batching.processor import process_batch
    from .bootstrap import get_runtime

    return process_batch(event, get_runtime())


def reply_sender(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Stage 3: SQS event from the AI queue → partial batch failures."""
    from .bootstrap import get_runtime
    from .replies.pipeline import send_replies

    return send_replies(event, get_runtime())


def stalled_sweeper(event: dict[str, Any], context: Any) -> dict[str, int]:
    """Scheduled: reset locks older than LOCK_TIMEOUT_SECONDS → {"checked": n, "reset": n}."""
    from .bootstrap import get_runtime
    from .sweeper import sweep

    return sweep(get_runtime())


def handoff_notifier(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The handoff queue: people told that a person waits for a human → partial batch failures."""
    from .bootstrap import get_runtime
    from .notices import notify_handoffs

    return notify_handoffs(event, get_runtime())


def operator_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The operators' inbox and its API: API Gateway proxy event → API Gateway proxy response."""
    from .bootstrap import get_runtime
    from .inbox.app import handle

    return handle(event, get_runtime())


def email_feedback_handler(event: dict[str, Any], context: Any) -> dict[str, int]:
    """SES's bounce and complaint notifications (an SNS event) → what they changed."""
    from .bootstrap import get_runtime
    from .feedback import record_feedback

    return record_feedback(event, get_runtime())


def ses_email_handler(event: dict[str, Any], context: Any) -> dict[str, int]:
    """Mail Amazon SES received (its receipt rule's Lambda action; the mail itself in S3) → stage 1."""
    from .bootstrap import get_runtime
    from .webhook.ses import receive_ses

    return receive_ses(event, get_runtime())
