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
from urllib.parse import parse_qsl, urlencode

from .. import clock
from ..channels import CHANNELS, Channel
from . import email_providers

# Twilio's webhooks are a few KB; anything near this is not one, and it keeps queue messages small.
MAX_BODY_BYTES = 262_144
_MAX_FIELDS = 500
_MEDIA_FIELD = re.compile(r"Media(Url|ContentType)(\d+)")
_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
EMAIL_FIELDS = ("from", "to", "subject", "text", "message_id")
STATUS_PATH = "/twilio/status"  # Twilio's delivery status callbacks


class ParsingError(ValueError):
    """The request is not a webhook we can read; the message says why."""


@dataclass(frozen=True)
class InboundRequest:
    """What a provider sent, before any interpretation."""

    channel: Channel | None  # None: a Twilio status callback
    endpoint: str  # the webhook's own path, without any stage prefix: `/whatsapp`, `/email/mailgun`
    provider: str | None  # an email provider whose shape the body has (`email_providers.py`)
    params: dict[str, Any]  # Twilio's form fields, or the email JSON, names as sent
    headers: dict[str, str]  # names lowercased
    path: str  # the path the provider called, API Gateway stage included
    query: str  # the query string, re-encoded ("" when none)


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
    http = request_context.get("http") if isinstance(request_context.get("http"), dict) else {}
    method = event.get("httpMethod") or request_context.get("httpMethod") or http.get("method")
    if method != "POST":
        raise ParsingError(f"method {method} is not allowed: webhooks are POSTed")
    channel = channel_from_event(event)
    if channel is None and not is_status_callback(event):
        raise ParsingError(
            f"unknown path {event.get('path')!r}: expected /whatsapp, /sms, /email or {STATUS_PATH}"
        )
    raw = _body_bytes(event)
    headers = _headers(event)
    provider = email_provider(event)
    if provider:
        try:
            params = email_providers.read(provider, raw, headers.get("content-type", ""))
        except email_providers.ProviderError as exc:
            raise ParsingError(str(exc)) from None
    elif channel is not None and not channel.twilio:
        params = _email_json(_utf8(raw))
    else:
        params = _twilio_form(_utf8(raw))
    if "host" not in headers and request_context.get("domainName"):  # payload 2.0 may leave it out
        headers["host"] = request_context["domainName"]
    return InboundRequest(
        channel=channel,
        endpoint=f"/email/{provider}" if provider else f"/{channel.name}" if channel else STATUS_PATH,
        provider=provider,
        params=params,
        headers=headers,
        # as called: REST's requestContext.path keeps the stage its event["path"] drops; 2.0's rawPath
        # has the stage (none on $default)
        path=request_context.get("path") or event.get("rawPath") or event.get("path"),
        query=_query(event),
    )


def build_context_object(request: InboundRequest, received_at: str | None = None) -> dict[str, Any]:
    """The provider's fields with snake_case names, the channel, media as a list, and `received_at`."""
    context: dict[str, Any] = {"channel_type": request.channel.name}
    if request.channel.twilio:
        media: dict[int, dict[str, str]] = {}
        for name, value in request.params.items():
            if match := _MEDIA_FIELD.fullmatch(name):
                kind = "url" if match[1] == "Url" else "content_type"
                media.setdefault(int(match[2]), {})[kind] = value
            elif name != "NumMedia":  # implied by the media list
                context[snake_case(name)] = value
        if media:
            context["media"] = [media[i] for i in sorted(media)]
    else:
        # Only the email's own fields: anything else in the JSON could pose as a record field.
        context.update(
            (k, request.params[k]) for k in ("from", "to", "subject", "message_id") if request.params.get(k)
        )
        raw = request.params.get("raw_text") or request.params.get("text") or ""
        # what the AI sees: the provider's stripped text, or ours
        if request.provider:
            context["body"] = request.params.get("text") or ""
        else:
            context["body"] = email_providers.strip_quoted(raw)
        if context["body"] != raw:
            context["raw_text"] = raw  # the text as written; `body`, what the AI sees, without the quotes
        if request.params.get("attachments"):
            context["attachments"] = request.params["attachments"]
    context["received_at"] = received_at or clock.iso()
    return context


def create_context_object(event: dict[str, Any]) -> dict[str, Any] | None:
    """The seed's entry: `context_object` for the event, or None when it cannot be parsed."""
    try:
        return build_context_object(parse_event(event))
    except ParsingError:
        return None


def snake_case(name: str) -> str:
    """`MessageSid` → `message_sid`, `WaId` → `wa_id`, `From` → `from`."""
    return _WORD_BOUNDARY.sub("_", name).lower()


def _body_bytes(event: dict[str, Any]) -> bytes:
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
    if len(raw) > MAX_BODY_BYTES:
        raise ParsingError(f"the body is {len(raw)} bytes, more than the {MAX_BODY_BYTES} allowed")
    return raw


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ParsingError("the body is not UTF-8") from None


def _twilio_form(text: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            text, keep_blank_values=True, strict_parsing=True, errors="strict", max_num_fields=_MAX_FIELDS
        )
    except UnicodeDecodeError:
        raise ParsingError("a form field is not UTF-8 once percent-decoded") from None
    except ValueError as exc:
        raise ParsingError(f"the body is not a form-urlencoded Twilio webhook: {exc}") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise ParsingError(f"the form field {name!r} appears twice")
        params[name] = value
    return params


def _email_json(text: str) -> dict[str, Any]:
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParsingError(f"the body is not JSON: {exc}") from None
    if not isinstance(params, dict):
        raise ParsingError("the body is not a JSON object")
    wrong = [f for f in EMAIL_FIELDS if params.get(f) is not None and not isinstance(params[f], str)]
    if wrong:
        raise ParsingError(f"these email fields must be strings: {', '.join(wrong)}")
    for name in EMAIL_FIELDS:
        try:
            (params.get(name) or "").encode("utf-8")
        except UnicodeEncodeError:
            raise ParsingError(f"the email field {name!r} is not valid Unicode (a lone surrogate)") from None
    return params


def _headers(event: dict[str, Any]) -> dict[str, str]:
    headers = {k.lower(): v[-1] for k, v in (event.get("multiValueHeaders") or {}).items() if v}
    headers.update((k.lower(), v) for k, v in (event.get("headers") or {}).items() if v is not None)
    return headers


def _query(event: dict[str, Any]) -> str:
    if "rawQueryString" in event:  # payload 2.0: exactly as sent
        return event["rawQueryString"] or ""
    if is_alb(event):  # ALB passes the parameters as sent, still percent-encoded
        multi = event.get("multiValueQueryStringParameters")
        pairs = (
            [(k, v) for k, values in multi.items() for v in values]
            if multi
            else list((event.get("queryStringParameters") or {}).items())
        )
        return "&".join(f"{k}={v}" for k, v in pairs)
    multi = event.get("multiValueQueryStringParameters")
    if multi:
        return urlencode([(k, v) for k, values in multi.items() for v in values])
    return urlencode(event.get("queryStringParameters") or {})
