"""The operators' inbox (`/inbox`) and its JSON API, as a handler of API Gateway events: the stack's
`OperatorInbox` function runs it (`handlers.operator_handler`), and `replies-engine serve` hands it its
requests as the same events.

The page is static HTML, CSS and a little JS shipped in the package (`static/`: no build step, no CDN),
served with a year's cache (their URLs carry the package's version) under a Content-Security-Policy of
`'self'`; it renders what the API returns with textContent only, since message bodies come from
strangers.

    GET  /api/me                                      who is logged in: {"name", "role"}
    GET  /api/conversations?owner=human|ai&status=S   the list: owner, status, last message, waiting
    GET  /api/conversations/{id}                      the record and its thread
    POST /api/conversations/{id}/reply                {"text", "take_over"?}: a human's reply, sent
    POST /api/conversations/{id}/assign               {"take_over"?}: claim it (`assigned_to`)
    POST /api/conversations/{id}/handoff              {"reason"}: a human answers from now
    POST /api/conversations/{id}/handback             the AI answers again (the claim is released)
    GET  /api/queues                                  per queue: available, delayed, in flight
    GET  /api/stats                                   received, answered, handed off…, time to first reply
    GET  /api/dlq/{name}                              what a DLQ holds (the embedded engine; admins)
    POST /api/dlq/{name}/redrive                      back to its queue (admins)
    GET  /api/operators                               the accounts (admins)
    POST /api/operators                               {"name", "role"}: a new account, its token once (admins)
    POST /api/operators/{name}/reset | /remove        a new token; the account gone (admins)
    GET  /api/people/{address}                        everything held about a person (admins)
    POST /api/people/{address}/erase                  their data erased, `?dry_run=1` counts only (admins)

Every request is an operator's (`operators.py`): a personal token as `Authorization: Bearer …`, or the
session cookie the page's login form (name and token) sets; OPERATOR_TOKEN acts as an admin. With no
OPERATOR_TOKEN, a `serve` that listens on loopback answers without credentials too (as `local`). The
operator recorded on a reply, a hand-off, a hand-back and a claim is the one logged in, never a body
field. Writes take JSON bodies only: a cross-site form cannot post them (and the cookie is
SameSite=Strict), so no CSRF token is needed.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Callable
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import operators
from ..handoff import OperatorError
from ..operators import ADMIN, LOCAL_OPERATOR, Operator, OperatorsError
from ..ports import BackendError, Runtime, TransientBackendError
from . import api
from .http import BadRequest, Request, Response, form, read

logger = logging.getLogger(__name__)

COOKIE = "replies_operator"
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
STATIC = Path(__file__).with_name("static")
_STATIC_TYPES = {".css": "text/css", ".js": "application/javascript", ".svg": "image/svg+xml"}
# the page runs only its own script, and never in a frame
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

Work = Callable[..., Any]
# (method, path pattern) → (the work, admins only); the pattern's groups are the work's arguments
_API: list[tuple[str, str, Work, bool]] = [
    ("GET", r"/api/me", api.me, False),
    ("GET", r"/api/conversations", api.conversations, False),
    ("GET", r"/api/conversations/(?P<conversation_id>[^/]+)", api.conversation, False),
    ("POST", r"/api/conversations/(?P<conversation_id>[^/]+)/reply", api.reply, False),
    ("POST", r"/api/conversations/(?P<conversation_id>[^/]+)/assign", api.assign, False),
    ("POST", r"/api/conversations/(?P<conversation_id>[^/]+)/handoff", api.handoff, False),
    ("POST", r"/api/conversations/(?P<conversation_id>[^/]+)/handback", api.handback, False),
    ("GET", r"/api/queues", api.queues, False),
    ("GET", r"/api/stats", api.stats, False),
    ("GET", r"/api/dlq/(?P<name>[^/]+)", api.dead_letters, True),
    ("POST", r"/api/dlq/(?P<name>[^/]+)/redrive", api.redrive, True),
    ("GET", r"/api/operators", api.accounts, True),
    ("POST", r"/api/operators", api.add_account, True),
    ("POST", r"/api/operators/(?P<name>[^/]+)/reset", api.reset_account, True),
    ("POST", r"/api/operators/(?P<name>[^/]+)/remove", api.remove_account, True),
    ("GET", r"/api/people/(?P<address>[^/]+)", api.export_person, True),
    ("POST", r"/api/people/(?P<address>[^/]+)/erase", api.erase_person, True),
]
_ROUTES: list[tuple[str, re.Pattern[str], Work, bool]] = [
    (method, re.compile(pattern), work, admin) for method, pattern, work, admin in _API
]


def handle(event: Any, runtime: Runtime, *, loopback: bool = False) -> dict[str, Any]:
    """An API Gateway event for `/inbox…` or `/api/…` → its answer. `loopback`: the server listens on
    loopback only (`serve`), where no credentials are needed without OPERATOR_TOKEN."""
    try:
        request = read(event)
    except BadRequest as exc:
        return _json(exc.status, {"error": str(exc)}).event()
    return _route(request, runtime, loopback).event()


def _route(request: Request, runtime: Runtime, loopback: bool) -> Response:
    path, method = request.path.rstrip("/") or "/", request.method
    if path == "/inbox" and method == "GET":
        return _page(request, runtime, loopback)
    if path == "/inbox/login" and method == "POST":
        return _login(request, runtime)
    if path == "/inbox/logout" and method == "POST":
        if session := request.cookies.get(COOKIE):
            operators.logout(runtime, session)  # ended where it is kept, not only in this browser
        return _redirect(request, cookie=_cookie(request, "", max_age=0))
    if path.startswith("/inbox/static/") and method == "GET":
        return _static(path.removeprefix("/inbox/static/"))
    for route_method, pattern, work, admin in _ROUTES:
        if (match := pattern.fullmatch(path)) and route_method == method:
            return _api(request, runtime, loopback, work, admin, match.groupdict())
    return _json(404, {"error": f"no {method} {path}"})


def who(request: Request, runtime: Runtime, loopback: bool) -> Operator | Response:
    """The operator a request is from (its session cookie, or its bearer token), or the refusal: 401
    without valid credentials, 429 past the failed attempts' limits."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    try:
        if scheme.lower() == "bearer":
            return operators.by_token(runtime, credentials.strip(), request.address)
        if (session := request.cookies.get(COOKIE)) and (found := operators.by_session(runtime, session)):
            return found
    except OperatorsError as exc:
        return _refusal(exc)
    if _open_on_loopback(request, runtime, loopback):
        return Operator(LOCAL_OPERATOR, ADMIN)
    return _json(
        401,
        {"error": "log in: a personal token (replies-engine operators add NAME) or OPERATOR_TOKEN"},
        {"WWW-Authenticate": 'Bearer realm="replies-engine"'},
    )


def _open_on_loopback(request: Request, runtime: Runtime, loopback: bool) -> bool:
    """A `serve` on loopback, for a loopback name, opens without credentials, as long as nobody set
    OPERATOR_TOKEN or made an account, and no proxy forwarded the request (a proxy on the same host
    would make the world loopback). A page elsewhere that rebinds its own name to 127.0.0.1 (DNS
    rebinding) sends its own Host, and is refused."""
    host = urlsplit(f"//{request.headers.get('host', '')}").hostname
    return (
        loopback
        and host in _LOOPBACK_NAMES
        and "x-forwarded-for" not in request.headers
        and runtime.settings.operator_token is None
        and not runtime.operators.operators()
    )


def _api(
    request: Request, runtime: Runtime, loopback: bool, work: Work, admin: bool, arguments: dict[str, str]
) -> Response:
    operator = who(request, runtime, loopback)
    if isinstance(operator, Response):
        return operator
    if admin and not operator.is_admin:
        return _json(403, {"error": "only an admin may do this"})
    try:
        body = _json_body(request) if request.method == "POST" else {}
        result = work(runtime, operator, body=body, query=request.query, **arguments)
    except OperatorError as exc:
        return _json(exc.status, {"error": str(exc)})
    except TransientBackendError as exc:
        return _json(503, {"error": f"the backend is busy, try again: {exc}"})
    except BackendError as exc:
        return _json(502, {"error": f"the backend failed: {exc}"})
    except Exception:
        logger.exception("operator API request failed", extra={"path": request.path})
        return _json(500, {"error": "unexpected error (logged)"})
    if request.method == "POST":  # the audit trail: who did what, when (and in the thread's events)
        logger.info("operator action", extra={"operator": operator.name, "action": request.path})
    return _json(200, result)


def _page(request: Request, runtime: Runtime, loopback: bool) -> Response:
    if isinstance(who(request, runtime, loopback), Response):
        return _login_page(request)
    page = _file("inbox.html").decode().replace("{{base}}", html.escape(request.base))
    page = page.replace("{{v}}", _version())
    return Response(200, page, {"Content-Type": "text/html; charset=utf-8", **_PAGE_HEADERS})


def _login(request: Request, runtime: Runtime) -> Response:
    fields = form(request)
    try:
        session, operator = operators.login(
            runtime, fields.get("name", ""), fields.get("token", ""), request.address
        )
    except OperatorsError as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
        return _login_page(request, exc.status, str(exc), headers)
    logger.info("operator logged in", extra={"operator": operator.name, "role": operator.role})
    max_age = int(runtime.settings.operator_session_hours * 3600)
    return _redirect(request, cookie=_cookie(request, session, max_age))


def _login_page(
    request: Request, status: int = 200, error: str = "", headers: dict[str, str] | None = None
) -> Response:
    notice = f'<p class="error">{html.escape(error)}</p>' if error else ""
    static = f"{request.base}/inbox/static"
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>replies-engine · log in</title><link rel="stylesheet" href="{static}/inbox.css?v={_version()}">
<link rel="icon" href="{static}/icon.svg?v={_version()}"></head>
<body><form class="login" method="post" action="{request.base}/inbox/login"><h1>replies-engine inbox</h1>{notice}
<label>Name <input name="name" autocomplete="username" autocapitalize="none" autofocus></label>
<label>Token <input name="token" type="password" autocomplete="current-password" required></label>
<button type="submit">Log in</button>
<p class="hint">Your token comes from <code>replies-engine operators add NAME</code>.</p></form></body></html>"""
    return Response(
        status, body, {"Content-Type": "text/html; charset=utf-8", **_PAGE_HEADERS, **(headers or {})}
    )


def _static(name: str) -> Response:
    path = STATIC / name
    if "/" in name or path.suffix not in _STATIC_TYPES or not path.is_file():
        return _json(404, {"error": "no such file"})
    headers = {
        "Content-Type": _STATIC_TYPES[path.suffix],
        "Cache-Control": "public, max-age=31536000, immutable",  # the page asks for ?v=<version>
        "X-Content-Type-Options": "nosniff",
    }
    return Response(200, _file(name), headers)


def _redirect(request: Request, cookie: str) -> Response:
    return Response(303, b"", {"Location": f"{request.base}/inbox", "Cache-Control": "no-store"}, cookie)


def _cookie(request: Request, value: str, max_age: int) -> str:
    secure = "; Secure" if request.https else ""
    return (
        f"{COOKIE}={value}; Max-Age={max_age}; Path={request.base or '/'}; HttpOnly; SameSite=Strict{secure}"
    )


def _json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise OperatorError(415, "send a JSON body (Content-Type: application/json)")
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise OperatorError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise OperatorError(400, "the body is not a JSON object")
    return body


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status,
        json.dumps(body, ensure_ascii=False),
        {"Content-Type": "application/json", "Cache-Control": "no-store", **(headers or {})},
    )


def _refusal(exc: OperatorsError) -> Response:
    return _json(
        exc.status, {"error": str(exc)}, {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    )


@cache
def _file(name: str) -> bytes:
    """A file of the page, read once per process (a warm Lambda serves every poll from memory)."""
    return (STATIC / name).read_bytes()


@cache
def _version() -> str:
    try:
        return version("replies-engine")
    except PackageNotFoundError:
        return "dev"
