"""Stage 1, step 2: is the request genuine? (docs/design.md §4.2.1)

Twilio signs the URL it called plus the POST parameters (every value of a repeated one), or, for a
JSON body, the URL with the body's SHA-256 in its `bodySHA256` parameter; with the auth token, or with
a shared key (SHA-256) when `X-Twilio-Webhooks-Signature-Settings` says so. twilio's own
RequestValidator checks it, in constant time, with and without the default port. Email providers share
a token with us.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from urllib.parse import parse_qs, urlsplit

from twilio.request_validator import HMAC_SHA1, HMAC_SHA256, RequestValidator, get_signature_algorithm

from .parsing import InboundRequest


def twilio_urls(request: InboundRequest, public_base_url: str | None) -> list[str]:
    """The URLs Twilio may have called: PUBLIC_BASE_URL + the webhook's path (else rebuilt from the
    request), with the query string as sent (or each way it may have been, `parsing._queries`)."""
    if public_base_url:
        url = f"{public_base_url}{request.endpoint}"
    else:
        host = request.headers.get("host")
        if not host:
            return []
        scheme = request.headers.get("x-forwarded-proto", "https").split(",")[0].strip()
        url = f"{scheme}://{host}{request.path}"
    return [f"{url}?{query}" if query else url for query in request.queries]


def verify_twilio(request: InboundRequest, secret: str, public_base_url: str | None) -> str | None:
    """None when the signature is right for one of `secret`'s comma-separated keys (the auth token, or
    one or two shared keys while one is rotated), else the reason it is not."""
    signature = request.headers.get("x-twilio-signature")
    if not signature:
        return "the X-Twilio-Signature header is missing"
    urls = twilio_urls(request, public_base_url)
    if not urls:
        return "no Host header to rebuild the URL Twilio called: set PUBLIC_BASE_URL"
    if isinstance(request.signed, str) and not parse_qs(urlsplit(urls[0]).query).get("bodySHA256"):
        return "a JSON body must be signed with bodySHA256 in the URL"
    algorithm = get_signature_algorithm(request.headers.get("x-twilio-webhooks-signature-settings"))
    if algorithm.upper() not in (HMAC_SHA1, HMAC_SHA256):
        return f"the signature algorithm {algorithm!r} is not one Twilio signs with"
    for key in filter(None, (k.strip() for k in secret.split(","))):
        validator = RequestValidator(key)
        if any(validator.validate(url, request.signed, signature, algorithm) for url in urls):
            return None
    return f"the X-Twilio-Signature does not match {urls[0]} (or {len(urls) - 1} other spellings) and the key"


def shared_key(request: InboundRequest) -> bool:
    """Signed with a shared key rather than the auth token (the signature settings name the key)."""
    return "key=" in (request.headers.get("x-twilio-webhooks-signature-settings") or "")


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
