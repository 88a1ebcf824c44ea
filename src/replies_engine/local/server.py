"""The local HTTP server: each request becomes an API Gateway REST proxy event for the same handler
that runs in Lambda (with the raw query string besides, as payload 2.0 has it), and the handler's
response goes back unchanged: the webhooks' handler, and for `/inbox…` and `/api/…` the inbox's."""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..handlers import webhook_handler

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


async def to_proxy_event(request: Request) -> dict[str, Any] | None:
    """The API Gateway REST proxy event for `request`, or None when its body is over the limit."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            return None
    try:
        text, is_base64 = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, is_base64 = base64.b64encode(body).decode(), True  # as API Gateway passes binary bodies
    multi_headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        multi_headers.setdefault(name, []).append(value)
    multi_headers.setdefault("x-forwarded-proto", [request.url.scheme])
    multi_query: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        multi_query.setdefault(name, []).append(value)
    path = request.url.path
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": request.method,
        "headers": {name: values[-1] for name, values in multi_headers.items()},
        "multiValueHeaders": multi_headers,
        "rawQueryString": request.url.query,  # as sent: what Twilio signed (REST has decoded ones only)
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "requestContext": {
            "path": path,
            "stage": "local",
            "httpMethod": request.method,
            "requestId": str(uuid.uuid4()),
            "identity": {"sourceIp": request.client.host if request.client else None},
        },
        "body": text or None,
        "isBase64Encoded": is_base64,
    }


def create_app(handler: Handler = webhook_handler, *, loopback: bool = False) -> Starlette:
    """The webhooks (any other path: the handler answers, as API Gateway would pass it on) and the
    operators' inbox and API (`inbox/app.py`); `loopback`: the server listens on loopback only."""

    def inbox(event: dict[str, Any], context: Any) -> dict[str, Any]:
        from ..bootstrap import get_runtime
        from ..inbox.app import handle

        return handle(event, get_runtime(), loopback=loopback)

    routes = [
        Route("/inbox", _endpoint(inbox), methods=_METHODS),
        Route("/inbox/{path:path}", _endpoint(inbox), methods=_METHODS),
        Route("/api/{path:path}", _endpoint(inbox), methods=_METHODS),
        Route("/{path:path}", _endpoint(handler), methods=_METHODS),
    ]
    return Starlette(routes=routes)


def _endpoint(handler: Handler) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        event = await to_proxy_event(request)
        if event is None:
            return JSONResponse({"message": "Request Too Long"}, status_code=413)
        try:
            result = await run_in_threadpool(handler, event, None)
        except Exception:
            # What API Gateway answers when the Lambda raises: Twilio sees a 5xx and may retry.
            logger.warning("the handler raised: answering 502 as API Gateway would", exc_info=True)
            return JSONResponse({"message": "Internal server error"}, status_code=502)
        body = result.get("body") or ""
        if result.get("isBase64Encoded"):
            body = base64.b64decode(body)
        response = Response(body, status_code=result["statusCode"], headers=result.get("headers") or {})
        for value in (result.get("multiValueHeaders") or {}).get("Set-Cookie", []):
            response.raw_headers.append((b"set-cookie", value.encode("latin-1")))
        return response

    return endpoint
