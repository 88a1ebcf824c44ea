"""Operators are accounts, on both backends: personal tokens shown once and kept hashed, page sessions
that expire and end with the account, failed logins limited per account and per address, roles, the
logged-in operator recorded (never a body field), and claims so that nobody answers twice."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx2
import pytest

from replies_engine import clock, operators
from replies_engine.inbox.app import COOKIE
from replies_engine.local.server import create_app
from replies_engine.operators import MAX_FAILURES_PER_ACCOUNT, MAX_FAILURES_PER_ADDRESS, OperatorsError

from .conftest import conversation
from .processes import cli, cli_json, serving
from .test_handoff import TOKEN, post, token_of


@pytest.fixture
def inbox(engine):
    engine.env(OPERATOR_TOKEN=TOKEN, BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0")
    engine.put(conversation(auto_queue_reply_message=True))  # a human answers it
    return engine


def call(method: str, path: str, *, token=None, cookie=None, body=None, form=None, address="10.0.0.1"):
    """The inbox's app, as a client at `address` reaches it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if cookie:
        headers["Cookie"] = f"{COOKIE}={cookie}"

    async def go() -> httpx2.Response:
        transport = httpx2.ASGITransport(app=create_app(loopback=False), client=(address, 40000))
        async with httpx2.AsyncClient(transport=transport, base_url="https://inbox.example") as client:
            if form is not None:
                return await client.post(path, data=form, headers=headers)
            return await client.request(method, path, json=body, headers=headers)

    return asyncio.run(go())


def log_in(name: str, token: str, address: str = "10.0.0.1") -> httpx2.Response:
    return call("POST", "/inbox/login", form={"name": name, "token": token}, address=address)


def test_an_account_token_is_shown_once_kept_hashed_and_works_until_reset_or_removal(inbox):
    made = operators.add(inbox.runtime, "Sam", "agent")

    assert made["name"] == "sam" and made["token"].startswith("reo_")
    stored = inbox.runtime.operators.operator("sam")
    assert made["token"] not in str(stored) and stored["token_hash"] == operators.hashed(made["token"])
    assert operators.accounts(inbox.runtime) == [
        {"name": "sam", "role": "agent", "created_at": stored["created_at"]}
    ]
    assert call("GET", "/api/me", token=made["token"]).json() == {"name": "sam", "role": "agent"}

    renewed = operators.reset(inbox.runtime, "sam")
    assert call("GET", "/api/me", token=made["token"]).status_code == 401
    assert call("GET", "/api/me", token=renewed["token"]).status_code == 200

    operators.remove(inbox.runtime, "sam")
    assert call("GET", "/api/me", token=renewed["token"]).status_code == 401
    with pytest.raises(OperatorsError) as missing:
        operators.reset(inbox.runtime, "sam")
    assert missing.value.status == 404


def test_names_are_checked_and_unique(inbox):
    operators.add(inbox.runtime, "kim")

    for name, status in [
        ("kim", 409),
        ("<b>x</b>", 400),
        ("", 400),
        ("operator-token", 400),
        ("a" * 65, 400),
    ]:
        with pytest.raises(OperatorsError) as refused:
            operators.add(inbox.runtime, name)
        assert refused.value.status == status, name
    with pytest.raises(OperatorsError):
        operators.add(inbox.runtime, "lee", role="root")


def test_a_page_session_works_expires_and_ends_with_the_account(inbox, monkeypatch):
    token = token_of(inbox, "sam")

    logged_in = log_in("sam", token)
    assert logged_in.status_code == 303
    session = logged_in.cookies[COOKIE]
    assert session != token and "HttpOnly" in logged_in.headers["set-cookie"]
    assert call("GET", "/api/me", cookie=session).json()["name"] == "sam"

    later = clock.now() + inbox.runtime.settings.operator_session_hours * 3600 + 1
    with monkeypatch.context() as patch:
        patch.setattr(clock, "now", lambda: later)
        assert call("GET", "/api/me", cookie=session).status_code == 401  # expired

    session = log_in("sam", token).cookies[COOKIE]
    operators.reset(inbox.runtime, "sam")
    assert call("GET", "/api/me", cookie=session).status_code == 401  # the reset ends it
    session = log_in("kim", token_of(inbox, "kim")).cookies[COOKIE]
    operators.remove(inbox.runtime, "kim")
    assert call("GET", "/api/me", cookie=session).status_code == 401  # so does the removal


def test_failed_logins_are_limited_per_account_and_per_address(inbox):
    token = token_of(inbox, "sam")

    for attempt in range(MAX_FAILURES_PER_ACCOUNT):
        assert log_in("sam", f"guess-{attempt}", address=f"10.1.0.{attempt}").status_code == 401
    blocked = log_in("sam", token, address="10.2.0.1")  # the right token, too late: the account is closed
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    assert log_in("kim", token_of(inbox, "kim"), address="10.2.0.1").status_code == 303  # others are not

    for attempt in range(MAX_FAILURES_PER_ADDRESS):
        log_in(f"nobody{attempt}", "guess", address="10.3.0.1")
    assert log_in("kim", token_of(inbox, "kim"), address="10.3.0.1").status_code == 429
    assert call("GET", "/api/me", token="reo_guess", address="10.3.0.1").status_code == 429  # bearer too


def test_the_operator_recorded_is_the_one_logged_in_never_a_body_field(inbox):
    post(inbox, "I need a person")

    sent = call(
        "POST",
        "/api/conversations/c1/reply",
        token=token_of(inbox, "sam"),
        body={"text": "Sam here.", "operator": "mallory"},
    )
    assert sent.status_code == 200, sent.text
    call("POST", "/api/conversations/c1/handback", token=token_of(inbox, "sam"), body={"operator": "mallory"})

    messages = inbox.get()["messages"]
    assert [m["operator"] for m in messages if m["role"] == "agent"] == ["sam"]
    assert [m["by"] for m in messages if m["role"] == "event"] == ["sam"]
    assert "mallory" not in str(inbox.get())


def test_only_admins_redrive_dead_letters(inbox):
    agent, admin = token_of(inbox, "sam"), token_of(inbox, "ada", role="admin")

    assert call("POST", "/api/dlq/whatsapp/redrive", token=agent, body={}).status_code == 403
    assert call("POST", "/api/dlq/whatsapp/redrive", token=admin, body={}).json() == {"redriven": 0}
    assert call("POST", "/api/dlq/whatsapp/redrive", token=TOKEN, body={}).status_code == 200


def test_a_claimed_conversation_is_answered_by_its_holder_or_taken_over_and_released_on_hand_back(inbox):
    post(inbox, "Hello?")
    sam, kim = token_of(inbox, "sam"), token_of(inbox, "kim")

    assert call("POST", "/api/conversations/c1/assign", token=sam, body={}).json()["assigned_to"] == "sam"
    assert call("POST", "/api/conversations/c1/assign", token=kim, body={}).status_code == 409
    refused = call("POST", "/api/conversations/c1/reply", token=kim, body={"text": "Kim here."})
    assert refused.status_code == 409 and "sam has claimed" in refused.json()["error"]
    assert inbox.outbox() == []
    [row] = call("GET", "/api/conversations", token=kim).json()["conversations"]
    assert row["assigned_to"] == "sam"  # every operator sees the claim

    taken = call(
        "POST", "/api/conversations/c1/reply", token=kim, body={"text": "Kim here.", "take_over": True}
    )
    assert taken.status_code == 200 and inbox.get()["assigned_to"] == "kim"
    call("POST", "/api/conversations/c1/handback", token=kim, body={})
    assert inbox.get()["assigned_to"] is None
    assert [entry["body"] for entry in inbox.outbox()] == ["Kim here."]


def test_two_operators_claiming_at_once_have_exactly_one_winner(inbox):
    post(inbox, "Hello?")
    names = [f"op{n}" for n in range(6)]
    for name in names:
        token_of(inbox, name)
    runtime, start, results = inbox.runtime, threading.Barrier(len(names)), {}

    def claim(name: str) -> None:
        start.wait()
        try:
            results[name] = runtime.store.assign("c1", name, take_over=False, now=time.time())[0]
        except Exception as exc:  # a contended write is an answer too: it claimed nothing
            results[name] = exc

    threads = [threading.Thread(target=claim, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [name for name, won in results.items() if won is True]
    assert len(winners) == 1 and inbox.get()["assigned_to"] == winners[0]


@pytest.mark.aws_only
def test_serve_against_aws_serves_the_inbox_and_consumes_no_queue(engine, engine_env):
    environment = {
        **engine.stack.environment(),
        **engine_env,
        "REPLIES_BACKEND": "aws",
        "OPERATOR_TOKEN": TOKEN,
    }
    post(engine, "waiting in the queue")
    before = engine.queued("whatsapp")

    with serving(environment) as (url, _):
        answer = httpx2.get(f"{url}/api/queues", headers={"Authorization": f"Bearer {TOKEN}"})
        time.sleep(2)  # workers, had they started, would have received by now

    assert answer.status_code == 200 and answer.json()["whatsapp"]["available"] == len(before) == 1
    attributes = engine.stack.sqs.get_queue_attributes(
        QueueUrl=engine.stack.queue_url("whatsapp"), AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "1"
    assert engine.queued("whatsapp")[0]["body"] == before[0]["body"]


@pytest.mark.sqlite_only
def test_the_command_line_manages_accounts(engine_env):
    made = cli_json(engine_env, "operators", "add", "ada", "--role", "admin")
    again = cli(engine_env, "operators", "add", "ada", check=False)

    assert made["role"] == "admin" and made["token"].startswith("reo_")
    assert again.returncode == 2 and "exists" in again.stderr
    assert [a["name"] for a in cli_json(engine_env, "operators", "list")] == ["ada"]
    assert "token" not in cli_json(engine_env, "operators", "list")[0]
    assert cli_json(engine_env, "operators", "reset", "ada")["token"] != made["token"]
    assert cli_json(engine_env, "operators", "remove", "ada") == {"name": "ada", "removed": True}
    assert cli_json(engine_env, "operators", "list") == []


def test_a_logout_ends_the_session_where_it_is_kept(inbox):
    session = log_in("sam", token_of(inbox, "sam")).cookies[COOKIE]

    call("POST", "/inbox/logout", cookie=session, form={})

    assert call("GET", "/api/me", cookie=session).status_code == 401  # a copied cookie is dead too


@pytest.mark.sqlite_only
def test_loopback_opens_without_credentials_only_before_anyone_has_an_account_and_never_via_a_proxy(engine):
    from .test_handoff import Api

    local = Api(loopback=True)
    assert local("GET", "/api/me", token=None).json() == {"name": "local", "role": "admin"}
    assert local("GET", "/api/me", token=None, headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 401

    operators.add(engine.runtime, "sam")

    assert local("GET", "/api/me", token=None).status_code == 401
