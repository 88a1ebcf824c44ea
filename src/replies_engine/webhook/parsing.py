"""Stage 1, step 1: an HTTP event → the provider's fields → `context_object`.

The event is any of AWS's front doors, found by its shape: API Gateway REST (payload 1.0: `httpMethod`,
`path`, `requestContext.path` with the stage), HTTP API and Lambda Function URL (payload 2.0:
`requestContext.http.method`, `rawPath`, `rawQueryString`, lower-case headers, the host in
`requestContext.domainName`), Application Load Balancer (`requestContext.elb`; query parameters as
sent, not decoded)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus

from .. import clock
from ..channels import CHANNELS, EMAIL, TWILIO, Channel, Provider
from ..conversation import THREAD_FIELDS, structured
from ..json_body import json_object
from . import email_providers

# Twilio's webhooks are a few KB; anything near this is not one, and it keeps queue messages small.
MAX_BODY_BYTES = 262_144
# A mail may carry attachments up to API Gateway's 10 MB payload: only their descriptions go on a queue.
MAX_MAIL_BYTES = 10 * 1024 * 1024
MAX_MAIL_TEXT = 128 * 1024  # the text as written kept on the queue (SQS: 256 KiB a message)
_MAX_FIELDS = 500
_MEDIA_FIELD = re.compile(r"Media(Url|ContentType)(\d+)")
_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
# `/email`'s JSON, all strings (`reply_to` and `cc` optional, as the mail's headers say them)
EMAIL_FIELDS = ("from", "to", "subject", "text", "message_id", "raw_text", "reply_to", "cc")
_TWILIO_KEYS = ("from", "to", "body", "message_sid", "account_sid")  # the envelope's own, not provider_fields
STATUS_PATH = "/twilio/status"  # Twilio's delivery status callbacks
_RFC_ID = re.compile(r"<[^<>\s@]+@[^<>\s@]+>")


class ParsingError(ValueError):
    """The request is not a webhook we can read; the message says why."""


@dataclass(frozen=True)
class InboundRequest:
    """What a provider sent, before any interpretation."""

    channel: Channel | None  # None: a Twilio status callback
    endpoint: str  # the webhook's own path, without any stage prefix: `/whatsapp`, `/email/mailgun`
    email_provider: str | None  # an email provider whose shape the body has (`email_providers.py`)
    params: dict[str, Any]  # Twilio's form fields (a repeated one: its first value), or the email JSON
    headers: dict[str, str]  # names lowercased
    path: str  # the path the provider called, API Gateway stage included
    queries: tuple[
        str, ...
    ]  # the query string as sent, or where the event cannot tell, each way it may have been
    signed: Any = None  # what Twilio signed besides the URL: every form value, or a JSON body's text

    @property
    def provider(self) -> Provider:
        """Who sent it: the channel's provider (a status callback is Twilio's)."""
        return self.channel.provider if self.channel is not None else TWILIO


def channel_from_event(event: dict[str, Any]) -> Channel | None:
    """The channel named by the path's last segment: `/whatsapp`, `/prod/sms`, `/email/`, or an email
    provider's `/email/mailgun`."""
    path = _event_path(event)
    if path is None:
        return None
    if email_provider(event):
        return CHANNELS["email"]
    return CHANNELS.get(path.rpartition("/")[2])


def email_provider(event: dict[str, Any]) -> str | None:
    """`mailgun` for `/email/mailgun` (a stage prefix allowed), None for any other path."""
    path = _event_path(event) or ""
    parent, _, last = path.rpartition("/")
    return last if last in email_providers.PROVIDERS and parent.endswith("/email") else None


def is_status_callback(event: dict[str, Any]) -> bool:
    """`POST /twilio/status` (a stage prefix allowed, as for the channels)."""
    path = _event_path(event) if isinstance(event, dict) else None
    return path is not None and path.endswith(STATUS_PATH)


def _event_path(event: dict[str, Any]) -> str | None:
    path = event.get("path") or event.get("rawPath") or _context(event).get("path")
    return path.rstrip("/") if isinstance(path, str) else None


def _context(event: dict[str, Any]) -> dict[str, Any]:
    request_context = event.get("requestContext")
    return request_context if isinstance(request_context, dict) else {}


def is_alb(event: Any) -> bool:
    """An Application Load Balancer's event (it wants `statusDescription` in the answer)."""
    return isinstance(event, dict) and "elb" in _context(event)


def parse_event(event: dict[str, Any]) -> InboundRequest:
    """Read the request; raise ParsingError with a clear reason when it is not a webhook."""
    if not isinstance(event, dict):
        raise ParsingError("the event is not an API Gateway, Function URL or ALB event")
    request_context = _context(event)
    http: dict[str, Any] = request_context["http"] if isinstance(request_context.get("http"), dict) else {}
    method = event.get("httpMethod") or request_context.get("httpMethod") or http.get("method")
    if method != "POST":
        raise ParsingError(f"method {method} is not allowed: webhooks are POSTed")
    channel = channel_from_event(event)
    if channel is None and not is_status_callback(event):
        raise ParsingError(
            f"unknown path {event.get('path')!r}: expected /whatsapp, /sms, /email or {STATUS_PATH}"
        )
    raw = _body_bytes(
        event, MAX_MAIL_BYTES if channel is not None and channel.provider is EMAIL else MAX_BODY_BYTES
    )
    headers = _headers(event)
    provider = email_provider(event)
    read = _READERS[(channel.provider if channel is not None else TWILIO).name]  # a status callback: Twilio's
    params, signed = read(raw, headers, provider)
    if "host" not in headers and request_context.get("domainName"):  # payload 2.0 may leave it out
        headers["host"] = request_context["domainName"]
    return InboundRequest(
        channel=channel,
        endpoint=f"/email/{provider}" if provider else f"/{channel.name}" if channel else STATUS_PATH,
        email_provider=provider,
        params=params,
        headers=headers,
        # as called: REST's requestContext.path keeps the stage its event["path"] drops; 2.0's rawPath
        # has the stage (none on $default)
        path=request_context.get("path") or event.get("rawPath") or event.get("path") or "/",
        queries=_queries(event),
        signed=signed,
    )


def build_context_object(request: InboundRequest, received_at: str | None = None) -> dict[str, Any]:
    """The message's keys of the envelope (`envelope.MESSAGE_KEYS`): the channel, `received_at`, and
    what its provider's reader finds; the provider's other fields, snake-cased, under `provider_fields`
    only."""
    if request.channel is None:
        raise ParsingError("a status callback is no message")
    context: dict[str, Any] = {
        "channel_type": request.channel.name,
        **_CONTEXTS[request.channel.provider.name](request),
    }
    context["received_at"] = received_at or clock.iso()
    return context


def _read_twilio(raw: bytes, headers: dict[str, str], _: str | None) -> tuple[dict[str, Any], Any]:
    """Twilio's form (every value signed), or its JSON webhooks (the body's hash is in the URL)."""
    if _is_json(headers, raw):
        return _twilio_json(_utf8(raw)), _utf8(raw)
    signed = _twilio_form(_utf8(raw))
    return {name: values[0] for name, values in signed.items()}, signed


def _read_email(raw: bytes, headers: dict[str, str], provider: str | None) -> tuple[dict[str, Any], Any]:
    """An email provider's body (`/email/<provider>`), or `/email`'s own JSON."""
    if not provider:
        return _email_json(_utf8(raw)), None
    try:
        return email_providers.read(provider, raw, headers.get("content-type", "")), None
    except email_providers.ProviderError as exc:
        raise ParsingError(str(exc)) from None


def _twilio_context(request: InboundRequest) -> dict[str, Any]:
    """`From`, `To`, `Body`, `MessageSid`, `AccountSid`, the media as a list and what `structured`
    finds; the other fields under `provider_fields`."""
    context: dict[str, Any] = {}
    media: dict[int, dict[str, str]] = {}
    fields: dict[str, str] = {}
    for name, value in request.params.items():
        if match := _MEDIA_FIELD.fullmatch(name):
            kind = "url" if match[1] == "Url" else "content_type"
            media.setdefault(int(match[2]), {})[kind] = value
        elif name != "NumMedia":  # implied by the media list
            fields[snake_case(name)] = value
    context.update((k, fields.pop(k)) for k in _TWILIO_KEYS if k in fields)
    if media:
        context["media"] = [media[i] for i in sorted(media)]
    context.update(structured(fields))
    if fields:
        context["provider_fields"] = fields
    return context


def _email_context(request: InboundRequest) -> dict[str, Any]:
    """Only the email's own fields: anything else in the JSON could pose as a record field."""
    context: dict[str, Any] = {}
    context.update(
        (k, request.params[k])
        for k in ("from", "to", "subject", "message_id", *THREAD_FIELDS)
        if request.params.get(k) and isinstance(request.params[k], list if k == "references" else str)
    )
    raw = request.params.get("raw_text") or request.params.get("text") or ""
    # what the AI sees: the provider's stripped text, or ours
    if request.email_provider:
        context["body"] = request.params.get("text") or ""
    else:
        context["body"] = email_providers.strip_quoted(raw)
    if len(context["body"].encode()) > MAX_MAIL_TEXT:
        raise ParsingError(
            f"the mail's own text is over {MAX_MAIL_TEXT // 1024} KiB: more than a queue message holds"
        )
    if context["body"] != raw and len(raw.encode()) <= MAX_MAIL_TEXT:
        # the text as written, quoted history and all (kept when a queue message holds it: the history
        # is in the thread anyway); `body`, what the AI sees, without the quotes
        context["raw_text"] = raw
    if request.params.get("attachments"):
        context["attachments"] = request.params["attachments"]  # checked by the parser
    return context


_READERS = {TWILIO.name: _read_twilio, EMAIL.name: _read_email}
_CONTEXTS = {TWILIO.name: _twilio_context, EMAIL.name: _email_context}


def create_context_object(event: dict[str, Any]) -> dict[str, Any] | None:
    """The seed's entry: `context_object` for the event, or None when it cannot be parsed."""
    try:
        return build_context_object(parse_event(event))
    except ParsingError:
        return None


def snake_case(name: str) -> str:
    """`MessageSid` → `message_sid`, `WaId` → `wa_id`, `From` → `from`."""
    return _WORD_BOUNDARY.sub("_", name).lower()


def _body_bytes(event: dict[str, Any], limit: int) -> bytes:
    body = event.get("body")
    if body is None or body == "":
        raise ParsingError("the body is empty")
    if not isinstance(body, str):
        raise ParsingError("the body is not a string")
    if event.get("isBase64Encoded"):
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise ParsingError("the body is marked base64 but is not valid base64") from None
    else:
        raw = body.encode("utf-8", "surrogatepass")
    if len(raw) > limit:
        raise ParsingError(f"the body is {len(raw)} bytes, more than the {limit} allowed")
    return raw


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ParsingError("the body is not UTF-8") from None


class TwilioFields(dict):
    """A form's fields, name → every value in order: what twilio's RequestValidator signs (it reads a
    repeated field through `getall`, as from a web framework's MultiDict)."""

    def getall(self, name: str) -> list[str]:
        return self[name]


def _twilio_form(text: str) -> TwilioFields:
    try:
        pairs = parse_qsl(
            text, keep_blank_values=True, strict_parsing=True, errors="strict", max_num_fields=_MAX_FIELDS
        )
    except UnicodeDecodeError:
        raise ParsingError("a form field is not UTF-8 once percent-decoded") from None
    except ValueError as exc:
        raise ParsingError(f"the body is not a form-urlencoded Twilio webhook: {exc}") from None
    fields = TwilioFields()
    for name, value in pairs:
        fields.setdefault(name, []).append(value)
    return fields


def _is_json(headers: dict[str, str], raw: bytes) -> bool:
    return headers.get("content-type", "").lower().startswith("application/json") or raw.lstrip()[:1] == b"{"


def _twilio_json(text: str) -> dict[str, str]:
    """A JSON webhook's fields; values that are not strings kept as their JSON text."""
    try:
        body = json_object(text)
    except ValueError as exc:
        raise ParsingError(str(exc)) from None
    return {
        str(k): v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
        for k, v in list(body.items())[:_MAX_FIELDS]
    }


def _email_json(text: str) -> dict[str, Any]:
    try:
        params = json_object(text)
    except ValueError as exc:
        raise ParsingError(str(exc)) from None
    wrong = [f for f in EMAIL_FIELDS if params.get(f) is not None and not isinstance(params[f], str)]
    if wrong:
        raise ParsingError(f"these email fields must be strings: {', '.join(wrong)}")
    for name in EMAIL_FIELDS:
        try:
            (params.get(name) or "").encode("utf-8")
        except UnicodeEncodeError:
            raise ParsingError(f"the email field {name!r} is not valid Unicode (a lone surrogate)") from None
    attachments = params.get("attachments") or []
    if not isinstance(attachments, list) or not all(isinstance(a, dict) for a in attachments):
        raise ParsingError("attachments must be a list of objects {name, type, size}")
    own = params.get("message_id")
    return {
        **{k: params[k] for k in EMAIL_FIELDS if k in params},
        # the Message-ID a reply threads on, when it is one (`<local@domain>`)
        "email_message_id": own if isinstance(own, str) and _RFC_ID.fullmatch(own.strip()) else None,
        "attachments": [
            email_providers.attachment(a.get("name"), a.get("type") or a.get("content_type"), a.get("size"))
            for a in attachments
        ],
    }


def _headers(event: dict[str, Any]) -> dict[str, str]:
    """The headers, names lowercased, a repeated one's last value (`multiValueHeaders`: REST, ALB)."""
    multi, single = event.get("multiValueHeaders") or {}, event.get("headers") or {}
    if not isinstance(multi, dict) or not isinstance(single, dict):
        raise ParsingError("the event's headers are not an object")
    if not all(isinstance(v, list) and all(isinstance(i, str) for i in v) for v in multi.values()):
        raise ParsingError("the event's multiValueHeaders are not lists of strings")
    if not all(v is None or isinstance(v, str) for v in single.values()):
        raise ParsingError("the event's headers are not strings")
    headers = {k.lower(): v[-1] for k, v in multi.items() if v}
    headers.update((k.lower(), v) for k, v in single.items() if v is not None)
    return headers


def _queries(event: dict[str, Any]) -> tuple[str, ...]:
    """The query string as the caller sent it, where the event has it (payload 2.0's rawQueryString, and
    `serve`'s). An ALB passes the parameters still percent-encoded, without telling `?debug` from
    `?debug=`; a REST API passes them decoded only: then each plausible way of writing them, a
    bounded handful, most likely first."""
    if isinstance(event.get("rawQueryString"), str):
        return (event["rawQueryString"],)
    multi = event.get("multiValueQueryStringParameters") or {}
    single = event.get("queryStringParameters") or {}
    if not (isinstance(multi, dict) and isinstance(single, dict)) or not all(
        isinstance(values, list | None) for values in multi.values()
    ):
        raise ParsingError("the event's query string parameters are not an object of strings")
    params = [(k, v) for k, values in multi.items() for v in values or ()] if multi else list(single.items())
    if not all(isinstance(v, str) for _, v in params):
        raise ParsingError("the event's query string parameters are not strings")
    if not params:
        return ("",)
    if is_alb(event):
        return tuple(
            dict.fromkeys(
                "&".join(k + ("" if bare and not v else f"={v}") for k, v in params) for bare in (False, True)
            )
        )
    return _encodings(params)


# RFC 3986's sub-delimiters and the like, which a hand-written URL may leave unencoded (`a=1;b=2`)
_LITERAL = "!$'()*,;=:@/"
_HEX = re.compile(r"%[0-9A-F]{2}")


def _encodings(params: list[tuple[str, str]]) -> tuple[str, ...]:
    """Ways a URL may write `params`: `+` or `%20` for a space, reserved characters encoded or left
    literal, `?debug` or `?debug=`, upper- or lower-case hex, `~` or `%7E`."""
    found = []
    for encode in (quote_plus, quote):
        for safe in ("", _LITERAL):
            for bare in (False, True):
                query = "&".join(
                    encode(k, safe=safe) + ("" if bare and not v else "=" + encode(v, safe=safe))
                    for k, v in params
                )
                found += [query, _HEX.sub(lambda m: m[0].lower(), query), query.replace("~", "%7E")]
    return tuple(dict.fromkeys(found))
