"""Stage 1 for the mail Amazon SES receives. A receipt rule stores the whole mail in S3 (at the rule's key
prefix and SES's message id), then invokes this stage with AWS's event ("Sample incoming email event":
`Records[].ses.mail`, and `.receipt` with the recipients and SES's verdicts). The mail is read and mapped
onto the same `context_object` as the other providers' (`email_providers.read_mime`); then stage 1's
own steps run (`pipeline.admit`): the conversation by company address and sender, the rules, the
route, dedupe by Message-ID.

No signature to check: SES itself invokes the function (its resource policy names the account and the
rule). SES's verdicts count instead: a mail that fails the virus or spam scan is recorded in its
conversation for a human, never answered; one that fails DMARC where its domain's policy is `reject`
is refused (someone else wrote it).

The invocation is asynchronous: what fails for a reason that may pass (the store or a queue busy, S3
unreadable) raises, so that Lambda retries it twice and then keeps the event in the function's DLQ; a
refusal (no conversation, a mail that is not one) is logged and counted, as the webhooks answer it.
"""

from __future__ import annotations

import logging
from collections import Counter
from email.utils import formataddr, getaddresses
from typing import Any

from ..channels import CHANNELS
from ..conversation import WITHHELD, message_key
from ..ports import MailGone, Runtime
from .email_providers import ProviderError, read_mime
from .parsing import InboundRequest, ParsingError, build_context_object
from .pipeline import Outcome, admit
from .responses import ERROR_STATUS

logger = logging.getLogger(__name__)


class MailNotAccepted(Exception):
    """Raised for Lambda to retry the invocation, then keep it in the DLQ: the message says why."""


def receive_ses(event: dict[str, Any], runtime: Runtime) -> dict[str, int]:
    """Each mail of SES's event, accepted or refused → how many ended which way (`accepted`, or the error
    code). Raises MailNotAccepted for what must be tried again."""
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise MailNotAccepted("not an SES receipt event: it has no list of Records")
    counts: Counter[str] = Counter()
    for record in records:
        outcome = _receive(record, runtime)
        extra = {"channel_type": "email", **outcome.log}
        if outcome.error_code is None:
            logger.info("message accepted", extra={**extra, "queue_message_id": outcome.queue_message_id})
            counts["accepted"] += 1
            continue
        if ERROR_STATUS.get(outcome.error_code, 500) >= 500:
            raise MailNotAccepted(f"{outcome.error_code}: {outcome.message}")
        logger.warning(
            "message refused", extra={**extra, "error_code": outcome.error_code, "reason": outcome.message}
        )
        runtime.metrics.add("WebhookRefused", error_code=outcome.error_code)
        counts[outcome.error_code] += 1
    return dict(counts)


def _receive(record: dict[str, Any], runtime: Runtime) -> Outcome:
    ses = record.get("ses")
    mail = ses.get("mail") if isinstance(ses, dict) else None
    receipt = ses.get("receipt") if isinstance(ses, dict) else None
    if (
        not isinstance(mail, dict)
        or not isinstance(receipt, dict)
        or not isinstance(mail.get("messageId"), str)
    ):
        return Outcome("PARSING_ERROR", "not an SES receipt record: no ses.mail.messageId and ses.receipt")
    log: dict[str, Any] = {"ses_message_id": mail["messageId"]}
    if _verdict(receipt, "dmarcVerdict") == "FAIL" and receipt.get("dmarcPolicy") == "reject":
        return Outcome("INVALID_SIGNATURE", "the mail fails DMARC and its domain's policy is reject", log=log)
    try:
        raw = runtime.inbound_mail.read(mail["messageId"])
    except MailGone as exc:  # nothing to read now or later: kept in the DLQ, where the alarm tells someone
        raise MailNotAccepted(f"the mail SES stored cannot be read: {exc}") from exc
    try:
        fields = read_mime("ses", raw)
        recipients = [
            r for r in receipt.get("recipients") or mail.get("destination") or [] if isinstance(r, str)
        ]
        fields["to"] = _addressed(recipients, fields.get("to"), fields.get("cc"))
        request = InboundRequest(CHANNELS["email"], "ses", "ses", fields, {}, "", ("",))
        message = build_context_object(request)
    except (ProviderError, ParsingError) as exc:
        return Outcome("PARSING_ERROR", str(exc), log=log)
    log["message_sid"] = message_key(message)
    withheld = next((why for why in WITHHELD if _verdict(receipt, f"{why}Verdict") == "FAIL"), None)
    return admit(request, message, runtime, log, withheld=withheld)


def _verdict(receipt: dict[str, Any], name: str) -> str | None:
    verdict = receipt.get(name)
    return verdict.get("status") if isinstance(verdict, dict) else None


def _addressed(recipients: list[str], to: str | None, cc: str | None) -> str:
    """The mail's `to` as the lookup and the reply read it: the company's addresses SES received it for
    first (a Bcc'd address too), each with the name the mail gave it, then the other To addresses."""
    ours = [r.lower() for r in recipients]
    named = {address.lower(): name for name, address in getaddresses([to or "", cc or ""]) if address}
    others = [formataddr((n, a)) for n, a in getaddresses([to or ""]) if a and a.lower() not in ours]
    return ", ".join([formataddr((named.get(a, ""), a)) for a in ours] + others)
