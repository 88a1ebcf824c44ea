"""The operators' inbox (`/inbox`) and its JSON API, served by `replies-engine serve` beside the
webhooks (and runnable against the AWS backend from a laptop: `REPLIES_BACKEND=aws replies-engine serve`).

The page is static HTML, CSS and a little JS shipped in the package (`static/`: no build step, no CDN);
it renders what the API returns with textContent only, since message bodies come from strangers.

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
import statistics
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import clock, operators
from ..bootstrap import get_runtime
from ..channels import QUEUES
from ..conversation import AI, HUMAN, owned_by_human
from ..handoff import OperatorError, assign, conversation, hand_back, hand_off, human_reply
from ..operators import ADMIN, LOCAL_OPERATOR, Operator, OperatorsError
from ..ports import BackendError, TransientBackendError

logger = logging.getLogger(__name__)

COOKIE = "replies_operator"
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
MAX_BODY_BYTES = 64 * 1024
STATIC = Path(__file__).with_name("static")

Endpoint = Callable[[Request], Awaitable[Response]]


def inbox_routes(loopback: bool) -> list[Route | Mount]:
    """The page and the API; `loopback`: the server listens on loopback only (no token needed then)."""

    async def page(request: Request) -> Response:
        if isinstance(await run_in_threadpool(who, request, loopback), Response):
            return _login_page(request, status=200)
        return FileResponse(STATIC / "inbox.html", headers=_PAGE_HEADERS)

    async def login(request: Request) -> Response:
        # the form is urlencoded: read here, not with Starlette's parser (it needs python-multipart)
        form = parse_qs((await _bounded_body(request)).decode("utf-8", "replace"))
        name, token = (form.get("name") or [""])[0], (form.get("token") or [""])[0]
        try:
            session, operator = await run_in_threadpool(
                operators.login, get_runtime(), name, token, _address(request)
            )
        except OperatorsError as exc:
            headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
            return _login_page(request, status=exc.status, error=str(exc), headers=headers)
        logger.info("operator logged in", extra={"operator": operator.name, "role": operator.role})
        response = RedirectResponse("/inbox", status_code=303)
        response.set_cookie(
            COOKIE,
            session,
            max_age=int(get_runtime().settings.operator_session_hours * 3600),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/inbox", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    return [
        Route("/inbox", page, methods=["GET"]),
        Route("/inbox/login", login, methods=["POST"]),
        Route("/inbox/logout", logout, methods=["POST"]),
        Mount("/inbox/static", StaticFiles(directory=STATIC)),
        *_api_routes(loopback),
    ]


# the page runs only its own script, and never in a frame
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _login_page(
    request: Request, status: int, error: str = "", headers: dict[str, str] | None = None
) -> HTMLResponse:
    notice = f'<p class="error">{html.escape(error)}</p>' if error else ""
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>replies-engine · log in</title><link rel="stylesheet" href="/inbox/static/inbox.css">
<link rel="icon" href="/inbox/static/icon.svg"></head>
<body><form class="login" method="post" action="/inbox/login"><h1>replies-engine inbox</h1>{notice}
<label>Name <input name="name" autocomplete="username" autocapitalize="none" autofocus></label>
<label>Token <input name="token" type="password" autocomplete="current-password" required></label>
<button type="submit">Log in</button>
<p class="hint">Your token comes from <code>replies-engine operators add NAME</code>.</p></form></body></html>"""
    return HTMLResponse(body, status_code=status, headers={**_PAGE_HEADERS, **(headers or {})})


def _api_routes(loopback: bool) -> list[Route]:

    def guarded(work: Callable[..., Any], admin: bool = False) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            operator = await run_in_threadpool(who, request, loopback)
            if isinstance(operator, Response):
                return operator
            if admin and not operator.is_admin:
                return JSONResponse({"error": "only an admin may do this"}, status_code=403)
            try:
                body = await _json_body(request) if request.method == "POST" else {}
                result = await run_in_threadpool(
                    work, body, **request.path_params, query=request.query_params, operator=operator
                )
            except OperatorError as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status)
            except TransientBackendError as exc:
                return JSONResponse({"error": f"the backend is busy, try again: {exc}"}, status_code=503)
            except BackendError as exc:
                return JSONResponse({"error": f"the backend failed: {exc}"}, status_code=502)
            except Exception:
                logger.exception("operator API request failed", extra={"path": request.url.path})
                return JSONResponse({"error": "unexpected error (logged)"}, status_code=500)
            if request.method == "POST":  # the audit trail: who did what, when (and in the thread's events)
                logger.info("operator action", extra={"operator": operator.name, "action": request.url.path})
            return JSONResponse(result)

        return endpoint

    return [
        Route("/api/me", guarded(lambda body, *, query, operator: vars(operator)), methods=["GET"]),
        Route("/api/conversations", guarded(_conversations), methods=["GET"]),
        Route("/api/conversations/{conversation_id}", guarded(_conversation), methods=["GET"]),
        Route("/api/conversations/{conversation_id}/reply", guarded(_reply), methods=["POST"]),
        Route("/api/conversations/{conversation_id}/assign", guarded(_assign), methods=["POST"]),
        Route("/api/conversations/{conversation_id}/handoff", guarded(_handoff), methods=["POST"]),
        Route("/api/conversations/{conversation_id}/handback", guarded(_handback), methods=["POST"]),
        Route("/api/queues", guarded(_queues), methods=["GET"]),
        Route("/api/stats", guarded(_stats), methods=["GET"]),
        Route("/api/dlq/{name}", guarded(_dlq, admin=True), methods=["GET"]),
        Route("/api/dlq/{name}/redrive", guarded(_redrive, admin=True), methods=["POST"]),
    ]


def who(request: Request, loopback: bool) -> Operator | Response:
    """The operator a request is from (its session cookie, or its bearer token), or the refusal: 401
    without valid credentials, 429 past the failed attempts' limits, 403 when nothing can open the door."""
    runtime = get_runtime()
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    try:
        if scheme.lower() == "bearer":
            return operators.by_token(runtime, credentials.strip(), _address(request))
        if (session := request.cookies.get(COOKIE)) and (found := operators.by_session(runtime, session)):
            return found
    except OperatorsError as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)
    if runtime.settings.operator_token is None and loopback and request.url.hostname in _LOOPBACK_NAMES:
        # loopback only, and for a loopback name: a page elsewhere that rebinds its own name to
        # 127.0.0.1 (DNS rebinding) sends its own Host, and is refused
        return Operator(LOCAL_OPERATOR, ADMIN)
    return JSONResponse(
        {"error": "log in: a personal token (replies-engine operators add NAME) or OPERATOR_TOKEN"},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="replies-engine"'},
    )


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise OperatorError(415, "send a JSON body (Content-Type: application/json)")
    raw = await _bounded_body(request)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise OperatorError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise OperatorError(400, "the body is not a JSON object")
    return body


async def _bounded_body(request: Request) -> bytes:
    """The body, read no further than MAX_BODY_BYTES (anyone who reaches the port may post)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise OperatorError(413, f"the body is over {MAX_BODY_BYTES} bytes")
    return bytes(body)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise OperatorError(400, f"{name!r} must be true or false")
    return value


def _text(body: dict[str, Any], name: str, default: str = "") -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise OperatorError(400, f"{name!r} must be a string")
    return value


# --- the endpoints' work (in a thread: the stores are synchronous) -----------------------------------


def _conversations(body: dict, *, query: Any, operator: Operator) -> dict[str, Any]:
    runtime = get_runtime()
    owner, status = query.get("owner"), query.get("status")
    if owner not in (None, AI, HUMAN):
        raise OperatorError(400, "owner is human or ai")
    rows = []
    for record in runtime.store.list(status):
        is_human = owned_by_human(record, runtime.settings.honor_hand_off_to_human)
        if owner is not None and (owner == HUMAN) != is_human:
            continue
        [last] = runtime.store.messages(record["conversation_id"], last=1) or [None]
        rows.append(summary(record, last, is_human))
    rows.sort(key=lambda row: -(row["waiting_seconds"] or -1))
    return {"conversations": rows}


def summary(record: dict[str, Any], last: dict[str, Any] | None, is_human: bool) -> dict[str, Any]:
    """An inbox row: who answers (AI, waiting for a human, or a human who answered last) and how long
    the person has waited (their message is the last one)."""
    waiting = None
    if last and last.get("role") == "user" and last.get("timestamp"):
        waiting = round(clock.now() - clock.parse_iso(last["timestamp"]), 1)
    label = AI
    if is_human:
        label = "agent" if last and last.get("role") == "agent" else "waiting_for_human"
    return {
        "conversation_id": record["conversation_id"],
        "owner": HUMAN if is_human else AI,
        "label": label,
        "conversation_status": record.get("conversation_status"),
        "opted_out": bool(record.get("opted_out")),
        "handoff_reason": record.get("handoff_reason") if is_human else None,
        "assigned_to": record.get("assigned_to"),
        "last_message": last,
        "waiting_seconds": waiting,
    }


def _conversation(body: dict, *, conversation_id: str, query: Any, operator: Operator) -> dict[str, Any]:
    runtime = get_runtime()
    return {**conversation(runtime, conversation_id), "messages": runtime.store.messages(conversation_id)}


def _reply(body: dict, *, conversation_id: str, query: Any, operator: Operator) -> dict[str, Any]:
    text = _text(body, "text")
    message = human_reply(
        get_runtime(), conversation_id, text, operator.name, take_over=_flag(body, "take_over")
    )
    return {"status": "sent", "message": message}


def _assign(body: dict, *, conversation_id: str, query: Any, operator: Operator) -> dict[str, Any]:
    record = assign(get_runtime(), conversation_id, operator.name, take_over=_flag(body, "take_over"))
    return {"status": "assigned", "assigned_to": record["assigned_to"]}


def _handoff(body: dict, *, conversation_id: str, query: Any, operator: Operator) -> dict[str, Any]:
    reason = _text(body, "reason").strip() or "an operator took over"
    record = hand_off(get_runtime(), conversation_id, reason, by=operator.name)
    return {"status": "handed_off", "owner": record.get("owner")}


def _handback(body: dict, *, conversation_id: str, query: Any, operator: Operator) -> dict[str, Any]:
    record = hand_back(get_runtime(), conversation_id, by=operator.name)
    return {"status": "handed_back", "owner": record.get("owner")}


def _queues(body: dict, *, query: Any, operator: Operator) -> dict[str, Any]:
    return get_runtime().queue.stats()


def _stats(body: dict, *, query: Any, operator: Operator) -> dict[str, Any]:
    """What the inbox shows above the list, from the conversations as stored (a read of every
    thread: an operator's tool, not a hot path) and the queues' counts."""
    runtime = get_runtime()
    counts = dict.fromkeys(
        (
            "received",
            "answered_by_ai",
            "answered_by_humans",
            "handed_off_by_rule",
            "handed_off_by_ai",
            "handed_off_by_operators",
            "handed_back",
        ),
        0,
    )
    firsts = []
    for record in runtime.store.list():
        messages = runtime.store.messages(record["conversation_id"])
        roles = [m.get("role") for m in messages]
        counts["received"] += roles.count("user")
        counts["answered_by_ai"] += sum(
            1 for m in messages if m.get("role") == "assistant" and "answers" in m
        )
        counts["answered_by_humans"] += roles.count("agent")
        counts["handed_back"] += sum(1 for m in messages if m.get("event") == "handed_back")
        if record.get("handed_off_at"):
            by = record.get("handed_off_by")
            counts["handed_off_by_" + ("rule" if by == "rule" else "ai" if by == AI else "operators")] += 1
        firsts.extend(_first_reply_seconds(messages))
    queues = runtime.queue.stats()
    counts["dead_lettered"] = sum(sum(q.values()) for name, q in queues.items() if name.endswith("-dlq"))
    counts["superseded"] = int(runtime.metrics.snapshot().get("ReplySuperseded", 0))  # since this serve began
    counts["first_reply_median_seconds"] = round(statistics.median(firsts), 1) if firsts else None
    counts["first_reply_p95_seconds"] = (
        round(statistics.quantiles(firsts, n=20, method="inclusive")[-1], 1) if len(firsts) > 1 else None
    )
    return counts


def _first_reply_seconds(messages: list[dict[str, Any]]) -> list[float]:
    """From the person's first message to the first reply after it (the AI's or a human's)."""
    first = next((m for m in messages if m.get("role") == "user" and m.get("timestamp")), None)
    if first is None:
        return []
    after = messages[messages.index(first) + 1 :]
    reply = next((m for m in after if m.get("role") in ("assistant", "agent") and m.get("timestamp")), None)
    if reply is None:
        return []
    return [max(0.0, clock.parse_iso(reply["timestamp"]) - clock.parse_iso(first["timestamp"]))]


def _dead_letters(name: str) -> str:
    if name not in QUEUES:
        raise OperatorError(404, f"no queue {name!r}: one of {', '.join(QUEUES)}")
    return f"{name}-dlq"


def _dlq(body: dict, *, name: str, query: Any, operator: Operator) -> dict[str, Any]:
    from ..ports import QueueError

    try:
        held = get_runtime().queue.peek(_dead_letters(name))
    except QueueError as exc:  # SQS cannot show a message without receiving it
        raise OperatorError(501, str(exc)) from exc
    return {
        "messages": [
            {"message_id": m.message_id, "body": m.body, "attributes": m.attributes, "sent_at": m.sent_at}
            for m in held
        ]
    }


def _redrive(body: dict, *, name: str, query: Any, operator: Operator) -> dict[str, Any]:
    _dead_letters(name)
    return {"redriven": get_runtime().queue.redrive(name)}
