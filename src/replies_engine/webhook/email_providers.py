"""Inbound email as the providers send it, each at its own path under `/email/`, mapped onto the plain
JSON shape (`from`, `to`, `subject`, `text`, `message_id`; docs/design.md §4.2) plus `raw_text` (the text
as written, quoted history and all) and `attachments` (name, type and size: the content stays with
the provider):

- `/email/sendgrid`: SendGrid's Inbound Parse (multipart/form-data: `from`, `to`, `subject`, `text`,
  `headers`, where the Message-ID is, `envelope`, the attachments as file parts), behind basic auth
  (EMAIL_WEBHOOK_TOKEN as the password in the URL SendGrid calls); parsed with the standard library's
  `email` package;
- `/email/mailgun`: a Mailgun route's forward (a form, multipart when it has attachments: `sender`/`from`, `recipient`, `subject`,
  `body-plain`, `stripped-text`, `Message-Id`), signed with HMAC-SHA256 over `timestamp` + `token`
  with the webhook signing key (MAILGUN_SIGNING_KEY); a timestamp older than 5 minutes is refused;
- `/email/postmark`: Postmark's inbound webhook (JSON: `From`, `To`, `Subject`, `TextBody`,
  `StrippedTextReply`, `MessageID`, `Headers`, `Attachments`), behind basic auth (EMAIL_WEBHOOK_TOKEN
  as the password in the URL Postmark calls).

The text the AI sees has the quoted history and the signature stripped: the provider's own stripped
text when it sends one, else `strip_quoted`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any
from urllib.parse import parse_qsl

from ..json_body import json_object

PROVIDERS = ("sendgrid", "mailgun", "postmark")
MAILGUN_MAX_AGE_SECONDS = 300

# Where a reply's own text ends: a quote's header line, a forwarded block, a signature's delimiter.
_QUOTE_HEADER = re.compile(
    r"^\s*(On .+ wrote:|Am .+ schrieb .+:|Le .+ a écrit ?:|El .+ escribió:|-----\s*Original Message\s*-----"
    r"|From: .+|Von: .+)\s*$",
    re.IGNORECASE,
)
_SIGNATURE = re.compile(r"^-- ?$")


class ProviderError(ValueError):
    """The provider's payload cannot be read: the message says why."""


def read(provider: str, body: bytes, content_type: str) -> dict[str, Any]:
    """The provider's body → the plain shape (and what its authenticity check needs)."""
    if provider == "sendgrid":
        return _sendgrid(*multipart_form(body, content_type))
    if provider == "mailgun" and content_type.lower().startswith("multipart/"):  # with attachments
        return _mailgun(*multipart_form(body, content_type))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProviderError("the body is not UTF-8") from None
    if provider == "mailgun":
        try:
            return _mailgun(dict(parse_qsl(text, keep_blank_values=True, strict_parsing=True)), [])
        except ValueError as exc:
            raise ProviderError(f"the body is not a Mailgun form: {exc}") from None
    return _postmark(text)


def multipart_form(body: bytes, content_type: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """(the fields, the attachments: name, type, size) of a multipart/form-data body, read with the
    standard library's `email` package."""
    from email import policy
    from email.parser import BytesParser

    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        raise ProviderError("expected multipart/form-data with a boundary")
    form = BytesParser(policy=policy.HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    if not form.is_multipart():
        raise ProviderError("the multipart body has no parts (a wrong boundary?)")
    fields: dict[str, str] = {}
    attachments = []
    for part in form.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if part.get_filename():
            attachments.append(attachment(part.get_filename(), part.get_content_type(), len(payload)))
        elif name:
            fields[str(name)] = payload.decode(part.get_content_charset() or "utf-8", "replace")
    if not fields:
        raise ProviderError("the multipart body holds no form fields")
    return fields, attachments


def _sendgrid(fields: dict[str, str], attachments: list[dict[str, Any]]) -> dict[str, Any]:
    from email.parser import HeaderParser

    headers = HeaderParser().parsestr(fields.get("headers", ""))
    raw = fields.get("text", "")
    return {
        "from": fields.get("from"),
        "to": fields.get("to"),
        "subject": fields.get("subject"),
        "message_id": (headers.get("Message-ID") or "").strip() or None,
        "text": strip_quoted(raw),
        "raw_text": raw,
        "attachments": attachments,
    }


def _mailgun(form: dict[str, str], attachments: list[dict[str, Any]]) -> dict[str, Any]:
    raw = form.get("body-plain", "")
    return {
        "from": form.get("from") or form.get("sender"),
        "to": form.get("recipient") or form.get("To"),
        "subject": form.get("subject") or form.get("Subject"),
        "message_id": form.get("Message-Id") or form.get("message-id"),
        "text": form.get("stripped-text") or strip_quoted(raw),
        "raw_text": raw,
        "attachments": attachments,
        "signature": {k: form.get(k, "") for k in ("timestamp", "token", "signature")},
    }


def _postmark(text: str) -> dict[str, Any]:
    try:
        body = json_object(text, "Postmark's body")
    except ValueError as exc:
        raise ProviderError(str(exc)) from None
    headers = {
        h.get("Name", "").lower(): h.get("Value") for h in body.get("Headers") or [] if isinstance(h, dict)
    }
    raw = body.get("TextBody") or ""
    return {
        "from": body.get("From"),
        "to": body.get("To"),
        "subject": body.get("Subject"),
        # the email's own Message-ID (what a reply's In-Reply-To names), else Postmark's id
        "message_id": headers.get("message-id") or body.get("MessageID"),
        "text": body.get("StrippedTextReply") or strip_quoted(raw),
        "raw_text": raw,
        "attachments": [
            attachment(a.get("Name"), a.get("ContentType"), a.get("ContentLength"))
            for a in body.get("Attachments") or []
            if isinstance(a, dict)
        ],
    }


def attachment(name: Any, content_type: Any, size: Any) -> dict[str, Any]:
    """An attachment as a message keeps it: its name, type and size (the content stays with the
    provider), each of its type or None, whatever the sender wrote."""
    return {
        "name": name if isinstance(name, str) else None,
        "content_type": content_type if isinstance(content_type, str) else None,
        "size": size if isinstance(size, int) and not isinstance(size, bool) else None,
    }


def verify_mailgun(signature: dict[str, str], signing_key: str, now: float) -> str | None:
    """None when Mailgun signed it (and lately), else the reason it did not."""
    timestamp, token, offered = (
        signature.get("timestamp", ""),
        signature.get("token", ""),
        signature.get("signature", ""),
    )
    if not (timestamp and token and offered):
        return "the Mailgun signature fields (timestamp, token, signature) are missing"
    try:
        age = now - float(timestamp)
    except ValueError:
        return f"the Mailgun timestamp {timestamp!r} is not a number"
    if abs(age) > MAILGUN_MAX_AGE_SECONDS:
        return f"the Mailgun timestamp is {age:.0f} s old: a replay is refused"
    expected = hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return (
        None
        if hmac.compare_digest(expected, offered)
        else "the Mailgun signature does not match the signing key"
    )


def strip_quoted(text: str) -> str:
    """The reply's own text: what comes before the quoted history (a "On … wrote:" line, "> " lines,
    an original-message block) and before the signature ("-- ")."""
    kept = []
    for line in text.splitlines():
        if _QUOTE_HEADER.match(line) or _SIGNATURE.match(line):
            break
        if line.lstrip().startswith(">"):
            continue
        kept.append(line)
    stripped = "\n".join(kept).strip()
    return stripped or text.strip()
