"""The reply stage's ports. Fakes only for what has no real counterpart here: the AI model (an
OpenAI-compatible server on loopback) and Twilio's REST API (twilio's Client with a recording HTTP
client)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from replies_engine.replies.responders import OpenAIResponder, ResponderError
from replies_engine.replies.senders import TwilioSender

from .fakes import TwilioApi

AI_CONTEXT = {
    "conversation_id": "c1",
    "batch_id": "batch-1",
    "channel_type": "whatsapp",
    "messages": [{"role": "user", "content": "can I move my appointment?"}],
    "history": [
        {"role": "assistant", "content": "Hi Zoë, how can we help?"},
        {"role": "user", "content": ""},
    ],
}


@pytest.fixture
def model_server():
    """An OpenAI-compatible /chat/completions on loopback; set `.answer` to what it returns."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers["Content-Length"])
            requests.append(
                {
                    "path": self.path,
                    "headers": dict(self.headers),
                    "json": json.loads(self.rfile.read(length)),
                }
            )
            status, payload = server.answer
            body = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.answer = (200, {"choices": [{"message": {"role": "assistant", "content": " Sure, which day? "}}]})
    server.requests = requests
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def responder(server):
    return OpenAIResponder(
        f"http://127.0.0.1:{server.server_port}/v1", "sk-test", "test-model", timeout_seconds=5
    )


def test_openai_responder_sends_the_conversation_and_returns_the_answer(model_server):
    assert responder(model_server).respond(AI_CONTEXT) == "Sure, which day?"

    [request] = model_server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    body = request["json"]
    assert body["model"] == "test-model"
    assert [m["role"] for m in body["messages"]] == [
        "system",
        "assistant",
        "user",
    ]  # the empty message left out
    assert body["messages"][-1]["content"] == "can I move my appointment?"


@pytest.mark.parametrize(
    "answer",
    [
        (500, {"error": "overloaded"}),
        (200, {"choices": []}),
        (200, b"not json"),
        (200, {"choices": [{"message": {"content": "  "}}]}),
    ],
)
def test_openai_responder_failures_are_clear_errors(model_server, answer):
    model_server.answer = answer

    with pytest.raises(ResponderError, match="chat/completions"):
        responder(model_server).respond(AI_CONTEXT)


def test_openai_responder_unreachable_is_a_clear_error():
    with pytest.raises(ResponderError, match=r"127\.0\.0\.1:9/"):
        OpenAIResponder("http://127.0.0.1:9/v1", None, "m", timeout_seconds=2).respond(AI_CONTEXT)


def test_twilio_sender_creates_a_message_with_twilios_client():
    http = TwilioApi()
    sender = TwilioSender(lambda: "AC" + "1" * 32, lambda: "token", http_client=http)

    sid = sender.send(
        "whatsapp", "whatsapp:+4915112345678", "whatsapp:+14155238886", "Sure, which day?", AI_CONTEXT
    )

    assert sid == "SM" + "f" * 32
    [request] = http.requests
    assert request["method"] == "POST"
    assert request["uri"] == f"https://api.twilio.com/2010-04-01/Accounts/AC{'1' * 32}/Messages.json"
    assert request["data"] == {
        "To": "whatsapp:+4915112345678",
        "From": "whatsapp:+14155238886",
        "Body": "Sure, which day?",
    }
    assert request["auth"] == ("AC" + "1" * 32, "token")


def test_replies_go_through_twilio_only_when_an_account_is_configured(engine):
    assert {type(s).__name__ for s in engine.runtime.senders.values()} == {"OutboxSender"}

    engine.env(TWILIO_ACCOUNT_SID="AC" + "1" * 32)
    senders = engine.runtime.senders

    assert type(senders["whatsapp"]) is TwilioSender and senders["sms"] is senders["whatsapp"]
    assert type(senders["email"]).__name__ == "OutboxSender"
