"""`replies-engine send`: an inbound message as the provider would post it, signed, to a running engine."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator

from ..channels import CHANNELS, TWILIO
from ..ports import Runtime
from ..webhook.responses import ERROR_HEADER


def post_inbound(
    runtime: Runtime,
    channel: str,
    sender: str,
    recipient: str,
    text: str,
    base_url: str,
    message_id: str | None,
) -> dict[str, Any]:
    """POST one message to `base_url`/`channel`; returns `{"status", "body", "message_id"}`, and the
    refusal's `error_code` (and `message`) when the engine refused it."""
    url = f"{base_url.rstrip('/')}/{channel}"
    settings = runtime.settings
    if CHANNELS[channel].provider is TWILIO:
        message_id = message_id or f"SM{uuid.uuid4().hex}"
        prefix = "whatsapp:" if channel == "whatsapp" else ""
        params = {
            "MessageSid": message_id,
            "SmsMessageSid": message_id,
            "SmsSid": message_id,
            "AccountSid": settings.twilio_account_sid or "AC" + "0" * 32,
            "From": prefix + sender,
            "To": prefix + recipient,
            "Body": text,
            "NumMedia": "0",
            "NumSegments": "1",
            "SmsStatus": "received",
            "ApiVersion": "2010-04-01",
        }
        data = urlencode(params).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        token = runtime.twilio_auth_token()
        if token:
            headers["X-Twilio-Signature"] = RequestValidator(token).compute_signature(url, params)
    else:
        message_id = message_id or f"<{uuid.uuid4().hex}@replies-engine.local>"
        message = {"from": sender, "to": recipient, "subject": "", "text": text, "message_id": message_id}
        data = json.dumps(message).encode()
        headers = {"Content-Type": "application/json"}
        token = runtime.secret("EMAIL_WEBHOOK_TOKEN")
        if token:
            headers["X-Webhook-Token"] = token
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, body, refused = response.status, response.read().decode(), response.headers[ERROR_HEADER]
    except urllib.error.HTTPError as exc:
        status, body, refused = exc.code, exc.read().decode(), exc.headers[ERROR_HEADER]
    except urllib.error.URLError as exc:
        return {"status": 599, "body": f"cannot reach {url}: {exc.reason}", "message_id": message_id}
    answer = {"status": status, "body": body, "message_id": message_id}
    if status >= 400 and body.startswith("{"):
        answer.update({k: v for k, v in json.loads(body).items() if k in ("error_code", "message")})
    elif refused:  # Twilio's channels: a 200 with TwiML, the code in a header
        answer["error_code"] = refused
    return answer
