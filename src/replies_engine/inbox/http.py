"""API Gateway's events (REST and HTTP API, as `serve` makes them too) as the inbox reads them, and its
answers as API Gateway wants them."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

MAX_BODY_BYTES = 64 * 1024


class BadRequest(ValueError):
    """An event the inbox cannot read: answered 400 (413 for a body over MAX_BODY_BYTES)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the API's stage: `/inbox`, `/api/conversations/c1`
    base: str  # the stage's prefix the browser sees (`/dev`), or "" (a custom domain, `serve`)
    headers: dict[str, str]  # names lowercased
    cookies: dict[str, str]
    query: dict[str, str]
    body: bytes
    address: str  # the client's IP address
    https: bool


@dataclass
class Response:
    status: int
    body: str | bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    cookie: str | None = None  # a Set-Cookie header's value

    def event(self) -> dict[str, Any]:
        """The proxy integration's answer (REST and HTTP API read the same keys; `multiValueHeaders`
        carries the cookie for REST, `cookies` for the HTTP API)."""
        body = self.body
        if isinstance(body, bytes):
            binary = not _is_text(self.headers.get("Content-Type", ""))
            text = base64.b64encode(body).decode() if binary else body.decode()
        else:
            binary, text = False, body
        answer: dict[str, Any] = {
            "statusCode": self.status,
            "headers": self.headers,
            "body": text,
            "isBase64Encoded": binary,
        }
        if self.cookie:
            answer["multiValueHeaders"] = {"Set-Cookie": [self.cookie]}
            answer["cookies"] = [self.cookie]
        return answer


def read(event: Any) -> Request:
    if not isinstance(event, dict):
        raise BadRequest("not an API Gateway event")
    raw_context = event.get("requestContext")
    context: dict[str, Any] = raw_context if isinstance(raw_context, dict) else {}
    raw_http = context.get("http")
    http: dict[str, Any] = raw_http if isinstance(raw_http, dict) else {}
    method = event.get("httpMethod") or http.get("method") or ""
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    path, base = _path(event, context)
    cookies = {}
    for line in [*(event.get("cookies") or []), headers.get("cookie", "")]:
        jar = SimpleCookie()
        try:
            jar.load(line)
        except Exception:  # a malformed cookie header: no cookies, never an error
            continue
        cookies.update({name: morsel.value for name, morsel in jar.items()})
    return Request(
        method=method.upper(),
        path=path,
        base=base,
        headers=headers,
        cookies=cookies,
        query={str(k): str(v) for k, v in (event.get("queryStringParameters") or {}).items()},
        body=_body(event),
        address=(context.get("identity") or {}).get("sourceIp") or http.get("sourceIp") or "unknown",
        https=headers.get("x-forwarded-proto", "https") == "https",
    )


def form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the login form)."""
    return dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))


def _path(event: dict[str, Any], context: dict[str, Any]) -> tuple[str, str]:
    """(the path without the stage, the stage's prefix as the browser sees it). REST gives both
    (`path` without it, `requestContext.path` with it); the HTTP API gives `rawPath` with the stage
    (none on `$default`)."""
    if "httpMethod" in event:
        path = event.get("path") or "/"
        seen = context.get("path") or path
        base = seen[: -len(path)] if seen.endswith(path) and seen != path else ""
        return path, base.rstrip("/")
    raw = event.get("rawPath") or "/"
    stage = context.get("stage")
    if stage and stage != "$default" and raw.startswith(f"/{stage}/"):
        return raw[len(stage) + 1 :], f"/{stage}"
    return raw, ""


def _body(event: dict[str, Any]) -> bytes:
    raw = event.get("body") or ""
    if not isinstance(raw, str):
        raise BadRequest("the body is not a string")
    try:
        body = base64.b64decode(raw, validate=True) if event.get("isBase64Encoded") else raw.encode()
    except (binascii.Error, ValueError):
        raise BadRequest("the body is not valid base64") from None
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(f"the body is over {MAX_BODY_BYTES} bytes", 413)
    return body


def _is_text(content_type: str) -> bool:
    return content_type.startswith(("text/", "application/json", "application/javascript", "image/svg+xml"))
