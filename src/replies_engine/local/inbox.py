"""The operators' JSON API, served by `replies-engine serve` beside the webhooks (and runnable against the
AWS backend from a laptop: `REPLIES_BACKEND=aws replies-engine serve`).

    GET  /api/conversations?owner=human|ai&status=S   the list: owner, status, last message, waiting
    GET  /api/conversations/{id}                      the record and its thread
    POST /api/conversations/{id}/reply                {"text", "operator"}: a human's reply, sent
    POST /api/conversations/{id}/handoff              {"reason", "operator"}: a human answers from now
    POST /api/conversations/{id}/handback             {"operator"}: the AI answers again
    GET  /api/queues                                  per queue: available, delayed, in flight
    GET  /api/dlq/{name}                              what a DLQ holds (the embedded engine)
    POST /api/dlq/{name}/redrive                      back to its queue

Every request needs OPERATOR_TOKEN, as `Authorization: Bearer …` or the inbox's login cookie; with no
token configured, only a `serve` that listens on loopback answers. Writes take JSON bodies only: a
cross-site form cannot post them (and the cookie is SameSite=Strict), so no CSRF token is needed.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import clock
from ..bootstrap import get_runtime
from ..channels import QUEUES
from ..conversation import AI, HUMAN, owned_by_human
from ..handoff import OperatorError, hand_back, hand_off, human_reply

COOKIE = "replies_operator"
MAX_BODY_BYTES = 64 * 1024

Endpoint = Callable[[Request], Awaitable[Response]]


def api_routes(loopback: bool) -> list[Route]:
    """The API's routes; `loopback`: the server listens on loopback only (no token needed then)."""

    def guarded(work: Callable[..., Any]) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            refusal = refused(request, loopback)
            if refusal is not None:
                return refusal
            try:
                body = await _json_body(request) if request.method == "POST" else {}
                result = await run_in_threadpool(
                    work, body, **request.path_params, query=request.query_params
                )
            except OperatorError as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status)
            return JSONResponse(result)

        return endpoint

    return [
        Route("/api/conversations", guarded(_conversations), methods=["GET"]),
        Route("/api/conversations/{conversation_id}", guarded(_conversation), methods=["GET"]),
        Route("/api/conversations/{conversation_id}/reply", guarded(_reply), methods=["POST"]),
        Route("/api/conversations/{conversation_id}/handoff", guarded(_handoff), methods=["POST"]),
        Route("/api/conversations/{conversation_id}/handback", guarded(_handback), methods=["POST"]),
        Route("/api/queues", guarded(_queues), methods=["GET"]),
        Route("/api/dlq/{name}", guarded(_dlq), methods=["GET"]),
        Route("/api/dlq/{name}/redrive", guarded(_redrive), methods=["POST"]),
    ]


def refused(request: Request, loopback: bool) -> Response | None:
    """None when the request carries the operator token (or none is needed), else a 401 (403 when no
    token is configured and the server is reachable from beyond loopback)."""
    token = get_runtime().settings.operator_token
    if token is None:
        if loopback:
            return None
        return JSONResponse(
            {"error": "set OPERATOR_TOKEN: without one the inbox answers on loopback only"}, status_code=403
        )
    offered = request.cookies.get(COOKIE) or ""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        offered = credentials.strip()
    if offered and hmac.compare_digest(offered.encode(), token.encode()):
        return None
    return JSONResponse(
        {"error": "missing or wrong operator token"},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="replies-engine"'},
    )


async def _json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise OperatorError(415, "send a JSON body (Content-Type: application/json)")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise OperatorError(413, f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise OperatorError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise OperatorError(400, "the body is not a JSON object")
    return body


def _text(body: dict[str, Any], name: str, default: str = "") -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise OperatorError(400, f"{name!r} must be a string")
    return value


# --- the endpoints' work (in a thread: the stores are synchronous) -----------------------------------


def _conversations(body: dict, *, query: Any) -> dict[str, Any]:
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
        "last_message": last,
        "waiting_seconds": waiting,
    }


def _conversation(body: dict, *, conversation_id: str, query: Any) -> dict[str, Any]:
    runtime = get_runtime()
    record = runtime.store.get(conversation_id)
    if record is None:
        raise OperatorError(404, f"no conversation {conversation_id!r}")
    return {**record, "messages": runtime.store.messages(conversation_id)}


def _reply(body: dict, *, conversation_id: str, query: Any) -> dict[str, Any]:
    message = human_reply(
        get_runtime(), conversation_id, _text(body, "text"), _text(body, "operator", "operator")
    )
    return {"status": "sent", "message": message}


def _handoff(body: dict, *, conversation_id: str, query: Any) -> dict[str, Any]:
    reason = _text(body, "reason").strip() or "an operator took over"
    record = hand_off(
        get_runtime(), conversation_id, reason, by=_text(body, "operator", "operator") or "operator"
    )
    return {"status": "handed_off", "owner": record.get("owner")}


def _handback(body: dict, *, conversation_id: str, query: Any) -> dict[str, Any]:
    record = hand_back(get_runtime(), conversation_id, by=_text(body, "operator", "operator") or "operator")
    return {"status": "handed_back", "owner": record.get("owner")}


def _queues(body: dict, *, query: Any) -> dict[str, Any]:
    return get_runtime().queue.stats()


def _dead_letters(name: str) -> str:
    if name not in QUEUES:
        raise OperatorError(404, f"no queue {name!r}: one of {', '.join(QUEUES)}")
    return f"{name}-dlq"


def _dlq(body: dict, *, name: str, query: Any) -> dict[str, Any]:
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


def _redrive(body: dict, *, name: str, query: Any) -> dict[str, Any]:
    _dead_letters(name)
    return {"redriven": get_runtime().queue.redrive(name)}
