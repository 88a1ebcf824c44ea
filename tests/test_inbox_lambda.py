"""The inbox in the stack: `operator_handler` (the `OperatorInbox` function) invoked with API Gateway's
events, REST (payload 1.0) and HTTP API (payload 2.0, AWS's published sample with the request's parts
replaced), on moto with the function's IAM role enforced: log in, list, claim, reply, a claim conflict,
a wrong role, an expired session, hand back, the operator recorded, the page and its static files."""

from __future__ import annotations

import base64
import copy
import json
from urllib.parse import urlencode

import pytest

from replies_engine import clock, operators
from replies_engine.handlers import operator_handler
from replies_engine.inbox.app import COOKIE

from .conftest import conversation
from .payloads import api_event
from .test_event_shapes import HTTP_API
from .test_handoff import post

pytestmark = pytest.mark.aws_only


def rest(method: str, path: str, body: str | None, headers: dict[str, str]) -> dict:
    return api_event(path, body, {"Host": "api.example.com", **headers}, stage="dev", method=method)


def http_api(method: str, path: str, body: str | None, headers: dict[str, str]) -> dict:
    event = copy.deepcopy(HTTP_API)
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/dev{path}"
    event["requestContext"]["http"]["method"] = method
    event["requestContext"]["stage"] = "dev"
    event["rawQueryString"], event["queryStringParameters"] = "", None
    cookie = headers.pop("Cookie", None)
    event["cookies"] = [cookie] if cookie else None
    event["headers"] = {
        "host": "api.example.com",
        "x-forwarded-proto": "https",
        **{k.lower(): v for k, v in headers.items()},
    }
    event["body"] = base64.b64encode(body.encode()).decode() if body else None  # HTTP APIs encode bodies
    event["isBase64Encoded"] = bool(body)
    return event


@pytest.fixture(params=["REST", "HTTP"])
def inbox(request, engine):
    make = rest if request.param == "REST" else http_api

    def call(method: str, path: str, *, token=None, session=None, body=None, form=None) -> dict:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if session:
            headers["Cookie"] = f"{COOKIE}={session}"
        if form is not None:
            headers["Content-Type"], text = "application/x-www-form-urlencoded", urlencode(form)
        elif body is not None:
            headers["Content-Type"], text = "application/json", json.dumps(body)
        else:
            text = None
        return operator_handler(make(method, path, text, headers), None)

    engine.put(conversation(auto_queue_reply_message=True))  # a human answers it
    engine.call = call
    return engine


def payload(answer: dict) -> dict:
    return json.loads(answer["body"])


def test_an_operator_logs_in_claims_replies_and_hands_back_through_the_function(inbox):
    post(inbox, "I need a person")
    sam = operators.add(inbox.runtime, "sam")["token"]

    logged_in = inbox.call("POST", "/inbox/login", form={"name": "sam", "token": sam})
    assert logged_in["statusCode"] == 303 and logged_in["headers"]["Location"] == "/dev/inbox"
    [cookie] = logged_in["cookies"]
    assert (
        "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie and "Path=/dev" in cookie
    )
    session = cookie.split(";")[0].split("=", 1)[1]

    page = inbox.call("GET", "/inbox", session=session)
    assert page["statusCode"] == 200 and "/dev/inbox/static/inbox.js?v=" in page["body"]
    assert page["headers"]["Content-Security-Policy"].startswith("default-src 'self'")
    [row] = payload(inbox.call("GET", "/api/conversations", session=session))["conversations"]
    assert row["label"] == "waiting_for_human"

    assert (
        payload(inbox.call("POST", "/api/conversations/c1/assign", session=session, body={}))["assigned_to"]
        == "sam"
    )
    sent = inbox.call(
        "POST", "/api/conversations/c1/reply", session=session, body={"text": "Sam here.", "operator": "eve"}
    )
    assert sent["statusCode"] == 200, sent["body"]
    back = inbox.call("POST", "/api/conversations/c1/handback", session=session, body={})
    assert payload(back)["owner"] == "ai"

    record = inbox.get()
    assert [m["operator"] for m in record["messages"] if m["role"] == "agent"] == ["sam"]
    assert record["assigned_to"] is None and [e["body"] for e in inbox.outbox()] == ["Sam here."]


def test_claims_roles_and_sessions_are_enforced_by_the_function(inbox, monkeypatch):
    post(inbox, "Hello?")
    sam, kim = operators.add(inbox.runtime, "sam")["token"], operators.add(inbox.runtime, "kim")["token"]
    ada = operators.add(inbox.runtime, "ada", "admin")["token"]

    inbox.call("POST", "/api/conversations/c1/assign", token=sam, body={})
    refused = inbox.call("POST", "/api/conversations/c1/reply", token=kim, body={"text": "Kim here."})
    assert refused["statusCode"] == 409 and "sam has claimed" in payload(refused)["error"]
    assert inbox.call("POST", "/api/dlq/whatsapp/redrive", token=kim, body={})["statusCode"] == 403
    assert payload(inbox.call("POST", "/api/dlq/whatsapp/redrive", token=ada, body={})) == {"redriven": 0}
    assert inbox.call("GET", "/api/conversations", token="reo_wrong")["statusCode"] == 401

    cookie = inbox.call("POST", "/inbox/login", form={"name": "kim", "token": kim})["cookies"][0]
    session = cookie.split(";")[0].split("=", 1)[1]
    later = clock.now() + inbox.runtime.settings.operator_session_hours * 3600 + 1
    with monkeypatch.context() as patch:
        patch.setattr(clock, "now", lambda: later)
        assert inbox.call("GET", "/api/me", session=session)["statusCode"] == 401
    assert payload(inbox.call("GET", "/api/me", session=session)) == {"name": "kim", "role": "agent"}


def test_the_static_files_are_cached_and_nothing_else_is_served(inbox):
    script = inbox.call("GET", "/inbox/static/inbox.js")

    assert script["statusCode"] == 200 and "immutable" in script["headers"]["Cache-Control"]
    assert inbox.call("GET", "/inbox/static/../app.py")["statusCode"] == 404
    assert inbox.call("GET", "/api/nowhere")["statusCode"] == 404
    assert inbox.call("GET", "/inbox")["body"].count('name="token"') == 1  # the login form


def test_an_admin_manages_accounts_through_the_function_and_an_agent_may_not(inbox):
    ada = operators.add(inbox.runtime, "ada", "admin")["token"]
    sam = operators.add(inbox.runtime, "sam")["token"]

    made = payload(inbox.call("POST", "/api/operators", token=ada, body={"name": "kim", "role": "agent"}))
    assert made["name"] == "kim" and made["token"].startswith("reo_")
    assert payload(inbox.call("GET", "/api/me", token=made["token"])) == {"name": "kim", "role": "agent"}
    listed = payload(inbox.call("GET", "/api/operators", token=ada))["operators"]
    assert [a["name"] for a in listed] == ["ada", "kim", "sam"] and "token" not in json.dumps(listed)
    assert inbox.call("POST", "/api/operators", token=ada, body={"name": "kim"})["statusCode"] == 409
    renewed = payload(inbox.call("POST", "/api/operators/kim/reset", token=ada, body={}))["token"]
    assert inbox.call("GET", "/api/me", token=made["token"])["statusCode"] == 401
    assert payload(inbox.call("POST", "/api/operators/kim/remove", token=ada, body={})) == {
        "name": "kim",
        "removed": True,
    }
    assert inbox.call("GET", "/api/me", token=renewed)["statusCode"] == 401

    for method, path in [
        ("GET", "/api/operators"),
        ("POST", "/api/operators"),
        ("POST", "/api/operators/ada/remove"),
    ]:
        refused = inbox.call(method, path, token=sam, body={} if method == "POST" else None)
        assert refused["statusCode"] == 403, path
    assert operators.accounts(inbox.runtime)[0]["name"] == "ada"


def test_an_admin_exports_and_erases_a_person_through_the_function(inbox):
    post(inbox, "Hallo, bitte alles löschen")
    ada = operators.add(inbox.runtime, "ada", "admin")["token"]
    path = "/api/people/%2B4915112345678"  # the number as a client encodes it in a path

    exported = payload(inbox.call("GET", path, token=ada))
    assert [c["conversation_id"] for c in exported["conversations"]] == ["c1"]
    erased = inbox.call("POST", f"{path}/erase", token=ada, body={})

    assert erased["statusCode"] == 200, erased["body"]  # the role may write the tombstone
    assert payload(erased)["conversations"] == 1
    record = inbox.get()
    assert record["erased_at"] and "gsi_recipient_tel" not in record and record["messages"] == []
    gone = inbox.call("POST", "/api/conversations/c1/reply", token=ada, body={"text": "Hallo?"})
    assert gone["statusCode"] == 410  # nothing is written to it any more
