"""What the email provider tells us after a reply went: Amazon SES's bounce and complaint notifications
(through its configuration set's SNS topic, `handlers.email_feedback_handler`).

A permanent bounce or a complaint marks each active conversation of the company's address with that
person `email_suppressed` (`{"reason", "type", "recipient", "at"}`) and hands it to a human: no further
email reply goes to it (the reply stage and the operators' replies check), and its messages go to the
handoff queue. A transient bounce is recorded (`email_last_bounce`) and changes nothing else: SES
retries those itself. SES suspends a sender whose bounce or complaint rate stays high; this keeps it
low.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from . import clock
from .channels import EMAIL_GSI, normalize_email
from .handoff import hand_off
from .ports import Record, Runtime

logger = logging.getLogger(__name__)

EMAIL = "email"  # who handed the conversation over: the provider's feedback


def record_feedback(event: dict[str, Any], runtime: Runtime) -> dict[str, int]:
    """An SNS event of SES notifications → `{"suppressed": n, "recorded": n}` (conversations changed).
    A record that is not a bounce or a complaint is skipped with a log line; a backend error raises, so
    that SNS delivers the event again."""
    counts = {"suppressed": 0, "recorded": 0}
    for raw in event.get("Records") or []:
        try:
            notification = json.loads(raw["Sns"]["Message"])
            kind, recipients, permanent = _what(notification)
            company = normalize_email(str(notification["mail"]["source"]))
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("not an SES bounce or complaint notification: skipped", extra={"reason": str(exc)})
            continue
        for recipient in recipients:
            for record in runtime.store.find_active(EMAIL_GSI, company, normalize_email(recipient)):
                counts["suppressed" if permanent else "recorded"] += 1
                _apply(runtime, record, kind, notification, permanent)
    return counts


def _what(notification: dict[str, Any]) -> tuple[str, list[str], bool]:
    """(the kind, the recipients it names, whether it stops email to them)."""
    kind = notification["notificationType"]
    if kind == "Bounce":
        bounce = notification["bounce"]
        recipients = [r["emailAddress"] for r in bounce["bouncedRecipients"]]
        return (
            f"bounce ({bounce.get('bounceType')}, {bounce.get('bounceSubType')})",
            recipients,
            bounce.get("bounceType") == "Permanent",
        )
    if kind == "Complaint":
        recipients = [r["emailAddress"] for r in notification["complaint"]["complainedRecipients"]]
        return "complaint", recipients, True
    raise ValueError(f"notificationType {kind!r}")


def _apply(
    runtime: Runtime, record: Record, kind: str, notification: dict[str, Any], permanent: bool
) -> None:
    conversation_id = record["conversation_id"]
    noted = {"reason": kind, "recipient": record.get("gsi_recipient_email"), "at": clock.iso(),
             "mail": (notification.get("mail") or {}).get("messageId")}  # fmt: skip
    if not permanent:
        runtime.store.write_unlocked(conversation_id, changes={"email_last_bounce": noted})
        logger.info("a transient bounce recorded", extra={"conversation_id": conversation_id})
        return
    runtime.store.write_unlocked(conversation_id, changes={"email_suppressed": noted})
    hand_off(runtime, conversation_id, f"email {kind}: no email goes to this address any more", by=EMAIL)
    runtime.metrics.add("EmailSuppressed", reason=kind.split(" ")[0])
    logger.warning("email to a person suppressed", extra={"conversation_id": conversation_id, "reason": kind})
