"""Inbound email as the providers send it, each at its own path under `/email/`, mapped onto the plain
JSON shape (`from`, `to`, `subject`, `text`, `message_id`; docs/design.md §4.2) plus `raw_text` (the text
as written, quoted history and all) and `attachments` (name, type and size: the content stays with
the provider):

- `/email/sendgrid`: SendGrid's Inbound Parse (multipart/form-data: `from`, `to`, `subject`, `text`,
  `headers`, where the Message-ID is, `envelope`, `charsets`, the attachments as file parts; or, with
  "POST the raw, full MIME message", the whole mail in `email`), behind basic auth (EMAIL_WEBHOOK_TOKEN
  as the password in the URL SendGrid calls); parsed with the standard library's `email` package;
- `/email/mailgun`: a Mailgun route's forward (a form, multipart when it has attachments: `sender`/`from`, `recipient`, `subject`,
  `body-plain`, `stripped-text`, `Message-Id`), signed with HMAC-SHA256 over `timestamp` + `token`
  with the webhook signing key (MAILGUN_SIGNING_KEY); a timestamp older than 5 minutes is refused;
- `/email/postmark`: Postmark's inbound webhook (JSON: `From`, `To`, `Subject`, `TextBody`,
  `StrippedTextReply`, `MessageID`, `Headers`, `Attachments`), behind basic auth (EMAIL_WEBHOOK_TOKEN
  as the password in the URL Postmark calls).

The text the AI sees has the quoted history and the signature stripped: the provider's own stripped
text when it sends one, else `strip_quoted`. Text is decoded in the charset the provider or the mail
declares; a part that is not in it is decoded as UTF-8, else windows-1252, and logged, never silently
replaced. What a reply needs is kept too: `reply_to`, `cc`, and the RFC 5322 `email_message_id` and
`references` (threading uses those, never a provider's own id). A mail without a Message-ID gets a
stable synthetic id from its fields and content (`synthetic-…`), so that a provider's retry of the same
mail is still a duplicate.
"""

from __future__ import annotations

import codecs
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from ..json_body import json_object

logger = logging.getLogger(__name__)

PROVIDERS = ("sendgrid", "mailgun", "postmark")
_FALLBACKS = ("utf-8", "windows-1252", "latin-1")  # a wrong declared charset: the likely ones, then bytes
_MAX_REFERENCES = 20  # the References chain a reply carries on (RFC 5322 lets it grow without end)
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
    """The provider's body → the plain shape (and what its authenticity check needs). Whatever the body
    holds, it is read or refused with a ProviderError (a 400): a header the `email` package cannot
    parse, a charset that names nothing, a field of the wrong type."""
    return _readable(provider, lambda: _read(provider, body, content_type))


def read_mime(provider: str, raw: bytes) -> dict[str, Any]:
    """A whole mail as a provider stored it (Amazon SES's in S3) → the plain shape; a ProviderError
    when it is not one."""
    return _readable(provider, lambda: _with_id(provider, mime(raw)))


def _readable(provider: str, read: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return read()
    except ProviderError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, LookupError) as exc:
        raise ProviderError(f"the {provider} body cannot be read: {type(exc).__name__}: {exc}") from None


def _read(provider: str, body: bytes, content_type: str) -> dict[str, Any]:
    if provider == "sendgrid":
        return _with_id(provider, _sendgrid(*multipart_form(body, content_type)))
    if provider == "mailgun" and content_type.lower().startswith("multipart/"):  # with attachments
        fields, attachments = multipart_form(body, content_type)
        return _with_id(provider, _mailgun(decoded(fields), attachments))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProviderError("the body is not UTF-8") from None
    if provider == "mailgun":
        try:
            form = dict(parse_qsl(text, keep_blank_values=True, strict_parsing=True))
        except ValueError as exc:
            raise ProviderError(f"the body is not a Mailgun form: {exc}") from None
        return _with_id(provider, _mailgun(form, []))
    return _with_id(provider, _postmark(text))


# A form field as it came: its bytes and the charset its part declared (None: none).
Field = tuple[bytes, str | None]


def multipart_form(body: bytes, content_type: str) -> tuple[dict[str, Field], list[dict[str, Any]]]:
    """(the fields, undecoded, the attachments: name, type, size) of a multipart/form-data body, read
    with the standard library's `email` package."""
    from email import policy
    from email.parser import BytesParser

    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        raise ProviderError("expected multipart/form-data with a boundary")
    form = BytesParser(policy=policy.HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    if not form.is_multipart():
        raise ProviderError("the multipart body has no parts (a wrong boundary?)")
    fields: dict[str, Field] = {}
    attachments = []
    for part in form.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = _bytes(part)
        if part.get_filename():
            attachments.append(attachment(part.get_filename(), part.get_content_type(), len(payload)))
        elif name:
            fields[str(name)] = (payload, part.get_content_charset())
    if not fields:
        raise ProviderError("the multipart body holds no form fields")
    return fields, attachments


def decoded(fields: dict[str, Field], charsets: dict[str, str] | None = None) -> dict[str, str]:
    """Each field as text, in the charset `charsets` names for it (SendGrid's `charsets` field), else
    the one its part declares, else UTF-8; see `decode_text` for a part that is not in it."""
    return {
        name: decode_text(raw, (charsets or {}).get(name) or charset or "utf-8", name)
        for name, (raw, charset) in fields.items()
    }


def decode_text(raw: bytes, declared: str, what: str = "text") -> str:
    """`raw` in the `declared` charset; when it is not (or the charset is unknown), in UTF-8, else
    windows-1252, else byte for byte: logged, never replaced with U+FFFD in silence."""
    for charset in (declared, *_FALLBACKS):
        try:
            text = raw.decode(codecs.lookup(charset).name)
        except (LookupError, ValueError):  # an unknown charset (or one with a NUL), or not in it
            continue
        if charset != declared:
            logger.warning(
                "a part was not in its declared charset: decoded with a fallback",
                extra={"part": what, "declared": declared, "decoded_as": charset},
            )
        return text
    raise AssertionError("latin-1 decodes every byte")  # pragma: no cover


def _sendgrid(fields: dict[str, Field], attachments: list[dict[str, Any]]) -> dict[str, Any]:
    """SendGrid's default payload (its `charsets` field names each field's charset), or its raw one
    (the whole mail in `email`)."""
    try:
        charsets = json.loads(fields.get("charsets", (b"{}", None))[0] or b"{}")
    except ValueError:
        charsets = {}
    if "email" in fields:  # "POST the raw, full MIME message": the mail's own charsets decide
        return mime(fields["email"][0])
    named = {k: v for k, v in charsets.items() if isinstance(v, str)} if isinstance(charsets, dict) else {}
    text = decoded(fields, named)
    headers = _headers(text.get("headers", ""))
    raw = text.get("text", "")
    return {
        "from": text.get("from"),
        "to": text.get("to"),
        "subject": text.get("subject"),
        **headers,
        "text": strip_quoted(raw),
        "raw_text": raw,
        "attachments": attachments,
    }


def mime(raw: bytes) -> dict[str, Any]:
    """A whole mail (RFC 5322, MIME) → the plain shape: its plain text part (else its HTML's text),
    each part in its declared charset (`decode_text`), its attachments described."""
    from email import policy
    from email.parser import BytesParser

    mail = BytesParser(policy=policy.default).parsebytes(raw)
    if not mail.get("From") and not mail.get("Message-ID"):
        raise ProviderError("the raw mail has neither a From nor a Message-ID header: not an email")
    body = mail.get_body(preferencelist=("plain", "html"))
    text = ""
    if body is not None:
        text = decode_text(_bytes(body), body.get_content_charset() or "utf-8", "body")
        if body.get_content_type() == "text/html":
            text = html_text(text)
    attachments = [
        attachment(part.get_filename(), part.get_content_type(), len(_bytes(part)))
        for part in mail.iter_attachments()
    ]
    return {
        "from": _header(mail, "From"),
        "to": _header(mail, "To"),
        "subject": _header(mail, "Subject"),
        **_threading(mail),
        "text": strip_quoted(text),
        "raw_text": text,
        "attachments": attachments,
    }


def html_text(markup: str) -> str:
    """The text of an HTML mail that has no plain part: its words, a line per block."""
    from html.parser import HTMLParser

    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []
            self.skip = 0

        def handle_starttag(self, tag: str, attrs: Any) -> None:
            self.skip += tag in ("script", "style", "head")
            if tag in ("br", "p", "div", "li", "tr", "h1", "h2", "h3", "blockquote"):
                self.parts.append("\n")

        def handle_endtag(self, tag: str) -> None:
            self.skip -= tag in ("script", "style", "head") and self.skip > 0

        def handle_data(self, data: str) -> None:
            if not self.skip:
                self.parts.append(data)

    parser = Text()
    parser.feed(markup)
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def _headers(block: str) -> dict[str, Any]:
    """What a reply needs of a mail's header block (SendGrid's `headers` field)."""
    from email import policy
    from email.parser import HeaderParser

    return _threading(HeaderParser(policy=policy.default).parsestr(block))


def _threading(mail: Any) -> dict[str, Any]:
    """`message_id`, `email_message_id` (the RFC one), `references` (the chain, the mail's own id last),
    `reply_to` and `cc` of a parsed mail or header block."""
    own = (_header(mail, "Message-ID") or "").strip() or None
    return {
        "message_id": own,
        "email_message_id": own,
        "references": references(_header(mail, "References"), _header(mail, "In-Reply-To")),
        "reply_to": _header(mail, "Reply-To"),
        "cc": _header(mail, "Cc"),
    }


def references(chain: Any, in_reply_to: Any) -> list[str]:
    """The ids of a mail's References header (else its In-Reply-To), oldest first, at most the newest
    _MAX_REFERENCES: what a reply names to stay in the thread (with the mail's own id after them)."""
    ids = re.findall(r"<[^<>\s]+>", _string(chain)) or re.findall(r"<[^<>\s]+>", _string(in_reply_to))
    return list(dict.fromkeys(ids))[-_MAX_REFERENCES:]


def _bytes(part: Any) -> bytes:
    """A MIME part's content, its transfer encoding undone (nothing for a multipart)."""
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _header(mail: Any, name: str) -> str | None:
    """A header's value, None when it is missing or cannot be parsed (`<@>`, an encoded line break):
    a mail with one bad header is still read."""
    try:
        value = mail.get(name)
        return str(value) if value is not None else None
    except Exception:
        return None


def _with_id(provider: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A mail without a Message-ID gets a stable one from what it says, so that the provider's retry of
    the same mail is still a duplicate; it threads nothing (`email_message_id` stays empty)."""
    if fields.get("message_id"):
        return fields
    content = json.dumps(
        [provider, *(fields.get(k) or "" for k in ("from", "to", "subject", "raw_text", "text"))],
        ensure_ascii=False,
    )
    return {**fields, "message_id": f"synthetic-{hashlib.sha256(content.encode()).hexdigest()[:32]}"}


def _mailgun(form: dict[str, str], attachments: list[dict[str, Any]]) -> dict[str, Any]:
    raw = form.get("body-plain", "")
    try:
        listed = json.loads(form.get("message-headers") or "[]")
        headers = {str(h[0]).lower(): str(h[1]) for h in listed if isinstance(h, list) and len(h) == 2}
    except ValueError:
        headers = {}
    own = form.get("Message-Id") or form.get("message-id") or headers.get("message-id")
    return {
        "from": form.get("from") or form.get("sender"),
        "to": form.get("To") or headers.get("to") or form.get("recipient"),
        "subject": form.get("subject") or form.get("Subject"),
        "message_id": own,
        "email_message_id": own,
        "references": references(
            form.get("References") or headers.get("references"),
            form.get("In-Reply-To") or headers.get("in-reply-to"),
        ),
        "reply_to": form.get("Reply-To") or headers.get("reply-to"),
        "cc": form.get("Cc") or headers.get("cc"),
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
    own = _string(headers.get("message-id")) or None
    return {
        "from": body.get("From"),
        "to": body.get("To"),
        "subject": body.get("Subject"),
        # the email's own Message-ID, else Postmark's id: dedupe by either, thread by the first only
        "message_id": own or body.get("MessageID"),
        "email_message_id": own,
        "references": references(headers.get("references"), headers.get("in-reply-to")),
        "reply_to": _string(body.get("ReplyTo")) or None,
        "cc": _string(body.get("Cc")) or None,
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
