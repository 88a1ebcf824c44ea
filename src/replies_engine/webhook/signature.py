"""Stage 1, step 2: is the request genuine? (DESIGN.md §4.2.1)

Twilio signs the URL it called plus the POST parameters; twilio's own RequestValidator checks it, in
constant time, with and without the default port. Email providers share a token with us.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from twilio.request_validator import RequestValidator, get_signature_algorithm

from .parsing import InboundRequest


def twilio_url(request: InboundRequest, public_base_url: str | None) -> str | None:
    """The URL Twilio called: PUBLIC_BASE_URL + the webhook's path, else rebuilt from the request."""
    if public_base_url:
        url = f"{public_base_url}{request.endpoint}"
    else:
        host = request.headers.get("host")
        if not host:
            return None
        scheme = request.headers.get("x-forwarded-proto", "https").split(",")[0].strip()
        url = f"{scheme}://{host}{request.path}"
    return f"{url}?{request.query}" if request.query else url


def verify_twilio(request: InboundRequest, auth_token: str, public_base_url: str | None) -> str | None:
    """None when the signature is right, else the reason it is not."""
    signature = request.headers.get("x-twilio-signature")
    if not signature:
        return "the X-Twilio-Signature header is missing"
    url = twilio_url(request, public_base_url)
    if url is None:
        return "no Host header to rebuild the URL Twilio called: set PUBLIC_BASE_URL"
    algorithm = get_signature_algorithm(request.headers.get("x-twilio-webhooks-signature-settings"))
    if RequestValidator(auth_token).validate(url, request.params, signature, algorithm):
        return None
    return f"the X-Twilio-Signature does not match {url} and the auth token"


def verify_email(request: InboundRequest, token: str) -> str | None:
    """None when the X-Webhook-Token header, or the basic-auth password, is the shared token."""
    offered = request.headers.get("x-webhook-token")
    if offered is None:
        offered = _basic_auth_password(request.headers.get("authorization", ""))
    if offered is None:
        return "neither an X-Webhook-Token header nor basic auth was given"
    if hmac.compare_digest(offered.encode(), token.encode()):
        return None
    return "the webhook token is wrong"


def _basic_auth_password(header: str) -> str | None:
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "basic" or not credentials:
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2]
