"""Real webhook payloads (Twilio's documented inbound parameters) and API Gateway events around them."""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator

TOKEN = "0123456789abcdef0123456789abcdef"
BASE = "https://hooks.example.com/prod"
ACCOUNT = "AC" + "b" * 32
COMPANY = "+14155238886"
PERSON = "+4915112345678"
EMAIL_TOKEN = "email-shared-secret"

_sids = itertools.count(1)


def sid(prefix: str = "SM") -> str:
    return f"{prefix}{next(_sids):032x}"


def whatsapp_text(body: str = "Hallo! 👋 Habt ihr morgen Zeit?", **overrides: str) -> dict[str, str]:
    message_sid = overrides.pop("MessageSid", None) or sid()
    params = {
        "SmsMessageSid": message_sid,
        "NumMedia": "0",
        "ProfileName": "Zoë",
        "MessageType": "text",
        "SmsSid": message_sid,
        "WaId": PERSON.lstrip("+"),
        "SmsStatus": "received",
        "Body": body,
        "To": f"whatsapp:{COMPANY}",
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": message_sid,
        "AccountSid": ACCOUNT,
        "From": f"whatsapp:{PERSON}",
        "ApiVersion": "2010-04-01",
    }
    params.update(overrides)
    return params


def whatsapp_media(
    content_type: str = "image/jpeg", caption: str = "", url: str | None = None
) -> dict[str, str]:
    message_sid = sid("MM")
    params = whatsapp_text(caption, MessageSid=message_sid, SmsMessageSid=message_sid, SmsSid=message_sid)
    params.update(
        NumMedia="1",
        MessageType="audio" if content_type.startswith("audio/") else "image",
        MediaContentType0=content_type,
        MediaUrl0=url
        or f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Messages/{message_sid}/Media/ME{'c' * 32}",
    )
    return params


def whatsapp_location() -> dict[str, str]:
    params = whatsapp_text("", MessageType="location")
    params.update(Latitude="52.520008", Longitude="13.404954", Address="Alexanderplatz, Berlin", Label="Büro")
    return params


def sms_text(body: str = "Can I move my appointment to Friday?") -> dict[str, str]:
    message_sid = sid()
    return {
        "ToCountry": "US",
        "ToState": "CA",
        "SmsMessageSid": message_sid,
        "NumMedia": "0",
        "ToCity": "SAN FRANCISCO",
        "FromZip": "",
        "SmsSid": message_sid,
        "FromState": "",
        "SmsStatus": "received",
        "FromCity": "",
        "Body": body,
        "FromCountry": "DE",
        "To": COMPANY,
        "MessagingServiceSid": "MG" + "d" * 32,
        "ToZip": "94105",
        "NumSegments": "1",
        "MessageSid": message_sid,
        "AccountSid": ACCOUNT,
        "From": PERSON,
        "ApiVersion": "2010-04-01",
    }


def email_json(text: str = "Hello, can we talk tomorrow?", **overrides: str) -> dict[str, str]:
    message = {
        "from": "Zoë Example <Zoe@Example.org>",
        "to": "support@company.example",
        "subject": "Re: your appointment",
        "text": text,
        "message_id": f"<{sid('')}@mail.example.org>",
    }
    message.update(overrides)
    return message


def sign(url: str, params: dict[str, str], token: str = TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


def api_event(
    path: str,
    body: str | None,
    headers: dict[str, str] | None = None,
    *,
    stage: str = "prod",
    method: str = "POST",
    base64_body: bool = False,
) -> dict[str, Any]:
    """An API Gateway REST proxy event as the execute-api host delivers it through the template's
    `/{proxy+}` route: `path` without the stage."""
    if base64_body and body is not None:
        body = base64.b64encode(body.encode()).decode()
    return {
        "resource": "/{proxy+}",
        "path": path,
        "pathParameters": {"proxy": path.lstrip("/")},
        "httpMethod": method,
        "headers": {"Host": "hooks.example.com", "X-Forwarded-Proto": "https", **(headers or {})},
        "requestContext": {
            "path": f"/{stage}{path}" if stage else path,
            "stage": stage,
            "httpMethod": method,
        },
        "queryStringParameters": None,
        "body": body,
        "isBase64Encoded": base64_body,
    }


def twilio_event(
    channel: str, params: dict[str, str], token: str = TOKEN, url: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    """A Twilio webhook to /channel, signed for `url` (default: PUBLIC_BASE_URL + /channel)."""
    signature = sign(url or f"{BASE}/{channel}", params, token)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature}
    return api_event(f"/{channel}", urlencode(params), headers, **kwargs)


def email_event(
    message: dict[str, Any] | str, token: str | None = EMAIL_TOKEN, **kwargs: Any
) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Webhook-Token"] = token
    body = message if isinstance(message, str) else json.dumps(message)
    return api_event("/email", body, headers, **kwargs)
