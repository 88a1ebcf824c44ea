"""RESPONDER=http, your own agent: the AI context POSTed as signed JSON to a real HTTP server on
loopback (the fake agent), its answers, retries and malformed answers; the signature's check; the
configuration; and one person answered by the agent through the local engine."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from replies_engine.bootstrap import build_runtime
from replies_engine.config import ConfigurationError, Settings
from replies_engine.ports import Handoff, Reply
from replies_engine.replies import http
from replies_engine.replies.agent import AgentResponder, verify_signature
from replies_engine.replies.responders import ResponderError

from .payloads import COMPANY, PERSON, twilio_event, whatsapp_text

SECRET = "agent-secret"
AI_CONTEXT = {
    "conversation_id": "c1",
    "batch_id": "batch-1",
    "channel_type": "whatsapp",
    "messages": [{"message_id": "SM1", "role": "user", "content": "Können wir Freitag? 🙏"}],
    "conversation": {"conversation_id": "c1"},
    "history": [{"role": "assistant", "content": "Hi Zoë, how can we help?"}],
}
OK = (200, {"reply": " Freitag passt. "})


@pytest.fixture
def agent():
    """An agent on loopback. It answers with `.answers` in order, repeating the last: `(status,
    payload)`, payload as JSON unless bytes, or None to never answer. `.requests` records each request's
    headers and raw body."""
    requests = []
    lock = threading.Lock()
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                answer = server.answers.pop(0) if len(server.answers) > 1 else server.answers[0]
            if answer is None:
                release.wait(5)  # until the test ends; the client has given up by then
                self.close_connection = True
                return
            status, payload = answer
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.answers = [OK]
    server.requests = requests
    server.url = f"http://127.0.0.1:{server.server_port}/reply"
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    """Retries without the real backoff's wait (its timing is tested with the OpenAI responder's)."""
    monkeypatch.setattr(http, "BACKOFF_SECONDS", 0.01)


def responder(agent, **options):
    return AgentResponder(agent.url, SECRET, **{"timeout_seconds": 5, **options})


def test_the_context_is_posted_as_json_signed_with_its_timestamp_and_named_by_its_batch(agent):
    responder(agent).respond(AI_CONTEXT)

    [request] = agent.requests
    headers, body = request["headers"], request["body"]
    assert request["path"] == "/reply"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Replies-Batch-Id"] == "batch-1"
    assert json.loads(body) == AI_CONTEXT
    assert "Zoë".encode() in body  # UTF-8 as is, not \u escapes
    timestamp, sent = headers["X-Replies-Timestamp"], headers["X-Replies-Signature"]
    assert verify_signature(SECRET, timestamp, body, sent)
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert sent == f"sha256={expected}"


@pytest.mark.parametrize(
    "answer, expected",
    [
        ({"reply": " Freitag passt. "}, Reply("Freitag passt.")),
        ({"reply": "Gern.", "usage": {"total_tokens": 42}}, Reply("Gern.", {"total_tokens": 42})),
        (
            {"reply": "Einen Moment, bitte.", "handoff": {"reason": "wants a refund"}},
            Handoff("wants a refund", "Einen Moment, bitte."),
        ),
        ({"handoff": {}}, Handoff("the agent asked for a human", "")),
    ],
    ids=["reply", "reply with usage", "handoff", "bare handoff"],
)
def test_the_agents_answer_is_a_reply_or_a_handoff(agent, answer, expected):
    agent.answers = [(200, answer)]

    assert responder(agent).respond(AI_CONTEXT) == expected


def test_a_server_error_is_retried_with_the_same_signed_request(agent):
    agent.answers = [(500, {"error": "busy"}), OK]

    assert responder(agent).respond(AI_CONTEXT) == Reply("Freitag passt.")

    first, second = agent.requests
    assert first["body"] == second["body"]
    assert first["headers"]["X-Replies-Signature"] == second["headers"]["X-Replies-Signature"]
    assert second["headers"]["X-Replies-Batch-Id"] == "batch-1"  # the agent can tell it is a retry


def test_a_client_error_is_not_retried(agent):
    agent.answers = [(400, {"error": "bad signature"}), OK]

    with pytest.raises(ResponderError, match=r"/reply: HTTP 400 .*bad signature"):
        responder(agent).respond(AI_CONTEXT)

    assert len(agent.requests) == 1


def test_an_agent_slower_than_the_timeout_is_tried_attempts_times(agent):
    agent.answers = [None]

    with pytest.raises(ResponderError, match=r"/reply: ReadTimeout.*\(after 3 attempts\)"):
        responder(agent, timeout_seconds=0.3, attempts=3).respond(AI_CONTEXT)

    assert len(agent.requests) == 3


@pytest.mark.parametrize(
    "payload, error",
    [
        (b"Freitag passt.", "the answer is not JSON"),
        ([{"reply": "hi"}], "the answer is not a JSON object"),
        ({"reply": ""}, "the reply is empty"),
        ({"reply": "  "}, "the reply is empty"),
        ({"reply": 3}, '"reply" is not a string'),
        ({"reply": "hi", "handoff": True}, '"handoff" is not an object'),
    ],
)
def test_malformed_answers_are_clear_errors_naming_the_url(agent, payload, error):
    agent.answers = [(200, payload), OK]

    with pytest.raises(ResponderError, match=f"^{re.escape(agent.url)}: {re.escape(error)}"):
        responder(agent).respond(AI_CONTEXT)

    assert len(agent.requests) == 1  # a wrong answer is not a transient one


def signed(secret=SECRET, timestamp=1_800_000_000, body=b'{"batch_id": "b1"}'):
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return str(timestamp), body, f"sha256={digest}"


def test_verify_signature_accepts_a_fresh_genuine_request():
    timestamp, body, signature = signed()

    assert verify_signature(SECRET, timestamp, body, signature, now=1_800_000_000 + 299)
    assert verify_signature(SECRET, int(timestamp), body, signature, now=1_800_000_000 - 299)


@pytest.mark.parametrize(
    "secret, timestamp, body, signature, now",
    [
        ("another secret", *signed(), 1_800_000_000),
        (SECRET, *signed()[:1], b'{"batch_id": "b2"}', signed()[2], 1_800_000_000),
        (SECRET, *signed(), 1_800_000_000 + 301),
        (SECRET, *signed(), 1_800_000_000 - 301),
        (SECRET, "soon", *signed()[1:], 1_800_000_000),
        (SECRET, *signed()[:2], "sha256=00", 1_800_000_000),
        (SECRET, *signed()[:2], "", 1_800_000_000),
    ],
    ids=["wrong secret", "changed body", "stale", "from the future", "no timestamp", "wrong", "empty"],
)
def test_verify_signature_refuses(secret, timestamp, body, signature, now):
    assert not verify_signature(secret, timestamp, body, signature, now=now)


def test_verify_signature_checks_against_the_clock_by_default():
    assert verify_signature(SECRET, *signed(timestamp=int(time.time())))
    assert not verify_signature(SECRET, *signed(timestamp=int(time.time()) - 3600))


@pytest.mark.parametrize(
    "variables, error",
    [
        ({"AGENT_SECRET": SECRET}, "AGENT_URL is required with RESPONDER=http"),
        ({"AGENT_URL": "https://agent.example/reply"}, "AGENT_SECRET is required with RESPONDER=http"),
        ({"AGENT_URL": "ftp://agent.example/reply", "AGENT_SECRET": SECRET}, "AGENT_URL='ftp://"),
        ({"AGENT_URL": "agent.example/reply", "AGENT_SECRET": SECRET}, "AGENT_URL='agent.example"),
        ({"AGENT_URL": "https://", "AGENT_SECRET": SECRET}, r"AGENT_URL='https://' is not an http\(s\) URL"),
    ],
    ids=["no url", "no secret", "ftp", "no scheme", "no host"],
)
def test_the_agent_responder_needs_an_http_url_and_a_secret(engine_env, variables, error):
    with pytest.raises(ConfigurationError, match=error):
        build_runtime(Settings.from_env({**engine_env, "RESPONDER": "http", **variables})).responder  # noqa: B018


@pytest.mark.sqlite_only
def test_a_persons_message_is_answered_by_the_agent_through_the_engine(engine, agent):
    agent.answers = [(200, {"reply": "Freitag um 10 Uhr?"})]
    engine.env(
        RESPONDER="http",
        AGENT_URL=agent.url,
        AGENT_SECRET=SECRET,
        RESPONDER_TIMEOUT_SECONDS="2",
        RESPONDER_ATTEMPTS="2",
        BATCH_DELAY_SECONDS="0",
        BATCH_WINDOW_SECONDS="0",
    )
    ai = engine.runtime.responder
    assert type(ai) is AgentResponder and (ai.timeout_seconds, ai.attempts) == (2, 2)
    params = whatsapp_text("Können wir den Termin verschieben?")

    assert engine.handle(twilio_event("whatsapp", params))["statusCode"] == 200
    assert engine.deliver("whatsapp") == 1
    assert engine.deliver("ai") == 1

    [request] = agent.requests
    headers, context = request["headers"], json.loads(request["body"])
    timestamp, signature = headers["X-Replies-Timestamp"], headers["X-Replies-Signature"]
    assert verify_signature(SECRET, timestamp, request["body"], signature)
    assert headers["X-Replies-Batch-Id"] == context["batch_id"]
    assert [(m["message_id"], m["content"]) for m in context["messages"]] == [
        (params["MessageSid"], "Können wir den Termin verschieben?")
    ]
    [reply] = engine.outbox()
    assert reply["body"] == "Freitag um 10 Uhr?"
    assert reply["to"] == f"whatsapp:{PERSON}" and reply["from"] == f"whatsapp:{COMPANY}"
    assert engine.get()["conversation_status"] == "ai_response_sent"
