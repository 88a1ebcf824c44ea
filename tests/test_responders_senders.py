"""The reply stage's ports. Fakes only for what has no real counterpart here: the AI model (an
OpenAI-compatible server on loopback) and Twilio's REST API (twilio's Client with a recording HTTP
client)."""

from __future__ import annotations

import json
import socket
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from replies_engine import clock
from replies_engine.adapters.senders import TwilioSender
from replies_engine.ports import AmbiguousSendError, CallCancelled, Handoff, Reply, TransientSendError
from replies_engine.replies.responders import LocalResponder, OpenAIResponder, ResponderError

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


OK = (200, {"choices": [{"message": {"role": "assistant", "content": " Sure, which day? "}}]})


@pytest.fixture
def model_server():
    """An OpenAI-compatible /chat/completions on loopback (HTTP/1.1, keep-alive). It answers with
    `.answers` in order, repeating the last: `(status, payload)` or `(status, payload, headers)`, or
    None to never answer. `.hold`, when set, is called before answering. `.requests` records each
    request with the server's time of arrival and the client's port."""
    requests = []
    lock = threading.Lock()
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse shows in the client ports

        def do_POST(self):
            length = int(self.headers["Content-Length"])
            with lock:
                requests.append(
                    {
                        "at": time.monotonic(),
                        "port": self.client_address[1],
                        "path": self.path,
                        "headers": dict(self.headers),
                        "json": json.loads(self.rfile.read(length)),
                    }
                )
                answer = server.answers.pop(0) if len(server.answers) > 1 else server.answers[0]
            if server.hold:
                server.hold()
            if answer is None:
                release.wait(5)  # until the test ends; the client has given up by then
                self.close_connection = True
                return
            if isinstance(answer, list):  # chunks, streamed
                self._stream(answer)
                return
            status, payload, headers = (*answer, {}) if len(answer) == 2 else answer
            body = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _stream(self, chunks):
            """Server-sent events, one chunk each `.chunk_seconds`, chunked and kept alive as OpenAI
            sends them (`.chunked = False`: the body ends when the connection closes). "BREAK" ends
            the connection mid-answer; bytes are written as they are (half a line). `.sent` counts
            the events the client took, `.closed` is set when it went away before the end."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header(
                *(("Transfer-Encoding", "chunked") if server.chunked else ("Connection", "close"))
            )
            self.end_headers()
            self.close_connection = not server.chunked

            def write(data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if server.chunked else data)
                self.wfile.flush()

            try:
                time.sleep(server.first_chunk_seconds)
                for chunk in chunks if "BREAK" in chunks else [*chunks, "[DONE]"]:
                    if chunk == "BREAK":
                        self.close_connection = True
                        return
                    data = chunk if isinstance(chunk, str | bytes) else json.dumps(chunk)
                    write(data if isinstance(data, bytes) else f"data: {data}\n\n".encode())
                    server.sent += 1
                    time.sleep(server.chunk_seconds)
                if server.chunked:
                    write(b"")  # the last chunk
            except (BrokenPipeError, ConnectionResetError):
                server.closed.set()
                self.close_connection = True

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.answers = [OK]
    server.chunk_seconds, server.sent, server.closed = 0.0, 0, threading.Event()
    server.first_chunk_seconds, server.chunked = 0.0, True
    server.hold = None
    server.requests = requests
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    release.set()
    server.shutdown()
    server.server_close()


def responder(server, **options):
    return OpenAIResponder(
        f"http://127.0.0.1:{server.server_port}/v1",
        "sk-test",
        "test-model",
        **{"timeout_seconds": 5, **options},
    )


def test_openai_responder_sends_the_conversation_and_returns_the_answer(model_server):
    assert responder(model_server).respond(AI_CONTEXT) == Reply("Sure, which day?")

    [request] = model_server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    assert request["headers"]["Content-Type"] == "application/json"
    body = request["json"]
    assert body["model"] == "test-model"
    assert [m["role"] for m in body["messages"]] == ["system", "assistant", "user", "user"]
    assert [m["content"] for m in body["messages"][2:]] == [
        "[an empty message]",
        "can I move my appointment?",
    ]


def test_openai_responder_without_a_key_sends_no_authorization(model_server):
    OpenAIResponder(f"http://127.0.0.1:{model_server.server_port}/v1", None, "m").respond(AI_CONTEXT)

    assert "Authorization" not in model_server.requests[0]["headers"]


def test_openai_responder_reuses_its_connection(model_server):
    ai = responder(model_server)

    assert ai.respond(AI_CONTEXT) == ai.respond(AI_CONTEXT) == Reply("Sure, which day?")

    first, second = model_server.requests
    assert first["port"] == second["port"]


def test_openai_responder_retries_a_server_error(model_server):
    model_server.answers = [(503, {"error": "overloaded"}), OK]

    assert responder(model_server).respond(AI_CONTEXT) == Reply("Sure, which day?")

    first, second = model_server.requests
    assert first["json"] == second["json"]
    assert second["headers"]["Authorization"] == "Bearer sk-test"


@pytest.mark.parametrize(
    "retry_after, seconds",
    [
        (lambda: "1", 1.0),
        (lambda: formatdate(time.time() + 2, usegmt=True), 0.9),
    ],  # a date drops the fraction
    ids=["seconds", "http-date"],
)
def test_openai_responder_waits_as_long_as_a_429_asks(model_server, retry_after, seconds):
    model_server.answers = [(429, {"error": "rate limited"}, {"Retry-After": retry_after()}), OK]

    assert responder(model_server).respond(AI_CONTEXT) == Reply("Sure, which day?")

    first, second = model_server.requests
    assert second["at"] - first["at"] >= seconds  # the jittered backoff alone would be at most 0.5 s


def test_openai_responder_gives_up_after_its_attempts(model_server):
    model_server.answers = [(500, {"error": "down"}, {"Retry-After": "0"})]

    with pytest.raises(ResponderError, match=r"chat/completions: HTTP 500 .*down.* \(after 3 attempts\)"):
        responder(model_server, attempts=3).respond(AI_CONTEXT)

    assert len(model_server.requests) == 3


def test_openai_responder_does_not_retry_a_client_error(model_server):
    model_server.answers = [(400, {"error": "bad model"}), OK]

    with pytest.raises(ResponderError, match=r"HTTP 400 .*bad model"):
        responder(model_server).respond(AI_CONTEXT)

    assert len(model_server.requests) == 1


def test_openai_responder_retries_a_server_that_does_not_answer_in_time(model_server):
    model_server.answers = [None]

    with pytest.raises(ResponderError, match=r"ReadTimeout.*\(after 2 attempts\)"):
        responder(model_server, timeout_seconds=0.3, attempts=2).respond(AI_CONTEXT)

    assert len(model_server.requests) == 2


def test_openai_responder_unreachable_is_a_clear_error():
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(ResponderError, match=rf"127\.0\.0\.1:{port}/.*ConnectError.*\(after 2 attempts\)"):
        OpenAIResponder(f"http://127.0.0.1:{port}/v1", None, "m", attempts=2).respond(AI_CONTEXT)


@pytest.mark.parametrize(
    "answer",
    [
        (200, {"choices": []}),
        (200, b"not json"),
        (200, {"choices": [{"message": {"content": "  "}}]}),
    ],
)
def test_openai_responder_malformed_answers_are_clear_errors(model_server, answer):
    model_server.answers = [answer, OK]

    with pytest.raises(ResponderError, match="chat/completions"):
        responder(model_server).respond(AI_CONTEXT)

    assert len(model_server.requests) == 1


def test_openai_responder_answers_threads_at_once(model_server):
    # every request waits here until all 8 have arrived: they must be in flight together
    model_server.hold = threading.Barrier(8, timeout=2).wait
    ai = responder(model_server)
    replies = []

    threads = [threading.Thread(target=lambda: replies.append(ai.respond(AI_CONTEXT))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert replies == [Reply("Sure, which day?")] * 8
    assert len({request["port"] for request in model_server.requests}) == 8


def test_openai_responder_time_budget():
    ai = OpenAIResponder("http://127.0.0.1:9/v1", None, "m")

    assert (ai.timeout_seconds, ai.connect_timeout_seconds, ai.attempts) == (30, 5, 3)
    assert ai.max_seconds == 3 * (5 + 30) + 2 * 20  # attempts, and the longest waits between them


def test_twilio_sender_creates_a_message_with_twilios_client():
    http = TwilioApi()
    sender = TwilioSender(lambda: "AC" + "1" * 32, lambda: "token", http_client=http)

    sid = sender.send(note("Sure, which day?"), 0)

    assert sid == f"SMf{1:031x}"
    [request] = http.requests
    assert request["method"] == "POST"
    assert request["uri"] == f"https://api.twilio.com/2010-04-01/Accounts/AC{'1' * 32}/Messages.json"
    assert request["data"] == {
        "To": "whatsapp:+4915112345678",
        "From": "whatsapp:+14155238886",
        "Body": "Sure, which day?",
    }
    assert request["auth"] == ("AC" + "1" * 32, "token")


def test_twilio_sender_tells_whether_a_noted_reply_went_out():
    """What a holder that died while sending leaves for the next one to ask."""
    http = TwilioApi()
    sender = TwilioSender(lambda: "AC" + "1" * 32, lambda: "token", http_client=http)
    noted = note("Sure, which day?", "and at what time?")

    assert sender.went_out(noted, 0) is False  # nothing went out yet
    sender.send(note("something else"), 0)
    assert sender.went_out(noted, 0) is False  # another body is another reply
    sid = sender.send(noted, 0)
    assert sender.went_out(noted, 0) == sid and sender.went_out(noted, 1) is False
    assert (
        sender.went_out({**noted, "timestamp": clock.iso(clock.now() + 60)}, 0) is False
    )  # sent before the note
    assert http.requests[-1]["method"] == "GET"

    http.list_status = 500
    assert sender.went_out(noted, 0) is None  # Twilio cannot say: in doubt, never sent twice


def test_twilio_sender_after_a_401_reads_the_rotated_token_and_sends_once():
    http = TwilioApi(token="new-token")
    tokens = {"current": "old-token"}

    def auth_token(refresh=False):
        if refresh:
            tokens["current"] = "new-token"  # what the secret says now
        return tokens["current"]

    sender = TwilioSender(lambda: "AC" + "1" * 32, auth_token, http_client=http)

    sid = sender.send(note("Sure, which day?"), 0)

    assert sid == f"SMf{1:031x}" and http.bodies == ["Sure, which day?"]
    assert [r["auth"][1] for r in http.requests] == ["old-token", "new-token"]
    http.token = "newer-token"  # a token nobody has: refused, retried later by the queue, not here
    with pytest.raises(TransientSendError, match="401"):
        sender.send(note("and at what time?"), 0)
    assert len(http.requests) == 3


def test_twilio_sender_asks_twilio_with_a_token_rotated_since_its_client_was_made():
    """The sweeper's question whether a part went out: with the secret's current token, not the one
    the container started with."""
    http = TwilioApi(token="old-token")
    tokens = {"current": "old-token"}
    sender = TwilioSender(lambda: "AC" + "1" * 32, lambda refresh=False: tokens["current"], http_client=http)
    noted = note("Sure, which day?")
    sid = sender.send(noted, 0)

    http.token = tokens["current"] = "new-token"  # rotated at Twilio and in the secret

    assert sender.went_out(noted, 0) == sid
    assert http.requests[-1]["auth"] == ("AC" + "1" * 32, "new-token")


def test_twilio_sender_gives_up_on_a_hung_twilio_within_its_timeout():
    """A server that accepts the connection and never answers: the send is in doubt, in seconds."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen()
    try:
        sender = TwilioSender(lambda: "AC" + "1" * 32, lambda refresh=False: "token", timeout_seconds=0.5)
        sender.client().api.base_url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(AmbiguousSendError):
            sender.send(note("Sure, which day?"), 0)
        assert time.monotonic() - started < 5
        assert sender.went_out(note("Sure, which day?"), 0) is None  # Twilio cannot say: in doubt
        assert time.monotonic() - started < 10
    finally:
        hung.close()


def note(*texts: str) -> dict:
    """A delivery note, as stage 3 writes it before the first part goes."""
    return {
        "batch_id": "b1",
        "conversation_id": "c1",
        "channel_type": "whatsapp",
        "texts": list(texts),
        "content": "".join(texts),
        "to": "whatsapp:+4915112345678",
        "from": "whatsapp:+14155238886",
        "timestamp": clock.iso(),
    }


def test_replies_go_through_twilio_only_when_an_account_is_configured(engine):
    assert {type(s).__name__ for s in engine.runtime.senders.values()} == {"OutboxSender"}

    engine.env(TWILIO_ACCOUNT_SID="AC" + "1" * 32)
    senders = engine.runtime.senders

    assert type(senders["whatsapp"]) is TwilioSender and senders["sms"] is senders["whatsapp"]
    assert type(senders["email"]).__name__ == "OutboxSender"


def test_the_model_calling_hand_off_to_human_is_a_handoff_with_its_last_word(model_server):
    call = {
        "type": "function",
        "function": {"name": "hand_off_to_human", "arguments": '{"reason": "wants a refund"}'},
    }
    model_server.answers = [
        (
            200,
            {"choices": [{"message": {"role": "assistant", "content": "One moment.", "tool_calls": [call]}}]},
        )
    ]
    context = {
        **AI_CONTEXT,
        "history": [
            {"role": "agent", "content": "Hi, Sam from support here."},
            {"role": "event", "content": "Handed back to the AI by sam: a human answered in between."},
        ],
    }

    answer = responder(model_server).respond(context)

    assert answer == Handoff("wants a refund", "One moment.")
    sent = model_server.requests[0]["json"]
    assert sent["tools"][0]["function"]["name"] == "hand_off_to_human"
    assert sent["messages"][1:3] == [
        {"role": "assistant", "content": "Hi, Sam from support here."},  # a colleague's reply is ours
        {"role": "system", "content": "Handed back to the AI by sam: a human answered in between."},
    ]


def chunk(delta=None, usage=None):
    """A chunk of OpenAI's chat completion stream (`stream_options.include_usage`: the last one has
    no choices and the usage)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": None}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1764000000,
            "model": "gpt-4o-mini", "choices": choices, "usage": usage}  # fmt: skip


USAGE = {"prompt_tokens": 57, "completion_tokens": 5, "total_tokens": 62}


def test_given_a_cancel_event_the_openai_responder_streams_and_reads_the_answer_whole(model_server):
    model_server.answers = [
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Sure,"}),
            chunk({"content": " which day?"}),
            chunk(usage=USAGE),
        ]
    ]

    answer = responder(model_server).respond(AI_CONTEXT, cancelled=threading.Event())

    assert answer == Reply("Sure, which day?", USAGE)
    body = model_server.requests[0]["json"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_a_server_that_answers_a_stream_request_whole_is_read_as_usual(model_server):
    answer = responder(model_server).respond(AI_CONTEXT, cancelled=threading.Event())

    assert answer == Reply("Sure, which day?")
    assert model_server.requests[0]["json"]["stream"] is True


def test_a_streamed_hand_off_is_put_together_from_its_pieces(model_server):
    call = {"index": 0, "id": "call_1", "type": "function"}
    model_server.answers = [
        [
            chunk({"role": "assistant", "content": "One moment."}),
            chunk({"tool_calls": [{**call, "function": {"name": "hand_off_to_human", "arguments": ""}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"reason": "wants'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' a refund"}'}}]}),
            chunk(usage=USAGE),
        ]
    ]

    answer = responder(model_server).respond(AI_CONTEXT, cancelled=threading.Event())

    assert answer == Handoff("wants a refund", "One moment.", USAGE)


def test_a_cancelled_call_closes_its_request_and_tells_what_it_cost(model_server):
    model_server.answers = [[chunk({"content": f"word{n} "}) for n in range(50)]]
    model_server.chunk_seconds = 0.05  # 2.5 s to the end
    cancelled = threading.Event()
    threading.Timer(0.5, cancelled.set).start()

    with pytest.raises(CallCancelled) as raised:
        responder(model_server).respond(AI_CONTEXT, cancelled=cancelled)

    assert model_server.closed.wait(2)  # the server saw the request closed…
    assert model_server.sent < 50  # …before it had sent the whole answer
    usage = raised.value.usage
    assert usage["estimated"] is True and usage["prompt_tokens"] > 20
    assert 0 < usage["completion_tokens"] < 50 * 2
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_a_call_is_cancelled_while_the_model_has_not_yet_said_a_word(model_server):
    model_server.answers = [[chunk({"content": "Sure."}), chunk(usage=USAGE)]]
    model_server.first_chunk_seconds = 3  # a long prompt read, or a model that reasons first
    cancelled = threading.Event()
    threading.Timer(0.2, cancelled.set).start()
    started = time.monotonic()

    with pytest.raises(CallCancelled):
        responder(model_server).respond(AI_CONTEXT, cancelled=cancelled)

    assert time.monotonic() - started < 1.5  # the connection was shut, not waited on
    assert model_server.closed.wait(5)


@pytest.mark.parametrize(
    "broken",
    [
        [chunk({"content": "Our prices are"}), {"error": {"message": "overloaded", "type": "server_error"}}],
        [chunk({"content": "Our prices are"}), "BREAK"],
    ],
    ids=["error-mid-answer", "connection-ends-mid-answer"],
)
def test_an_answer_that_breaks_off_is_not_sent_half_but_asked_again(model_server, broken):
    whole = [chunk({"content": "Our prices are on the website."}), chunk({}, USAGE) | {"choices": [
        {"index": 0, "delta": {}, "finish_reason": "stop"}]}]  # fmt: skip
    model_server.answers = [broken, whole]

    answer = responder(model_server, attempts=2).respond(AI_CONTEXT, cancelled=threading.Event())

    assert answer == Reply("Our prices are on the website.", USAGE)
    assert len(model_server.requests) == 2


def test_a_body_that_ends_mid_line_broke_off_and_is_asked_again(model_server):
    model_server.chunked = False  # the body ends when the connection does: h11 sees a clean end
    half = b'data: {"choices": [{"index": 0, "delta": {"content": "Hel'
    model_server.answers = [
        [chunk({"content": "Our"}), half, "BREAK"],
        [chunk({"content": "Hello."}), chunk(usage=USAGE)],
    ]

    answer = responder(model_server, attempts=2).respond(AI_CONTEXT, cancelled=threading.Event())

    assert answer == Reply("Hello.", USAGE) and len(model_server.requests) == 2


def test_streamed_calls_keep_their_connection(model_server):
    model_server.answers = [[chunk({"content": "Sure."}), chunk(usage=USAGE)]]
    ai = responder(model_server)

    assert ai.respond(AI_CONTEXT, cancelled=threading.Event()) == Reply("Sure.", USAGE)
    assert ai.respond(AI_CONTEXT, cancelled=threading.Event()) == Reply("Sure.", USAGE)

    first, second = model_server.requests
    assert first["port"] == second["port"]  # read to the body's end: the connection went back to the pool


def test_chunks_without_a_delta_are_read_past(model_server):
    finish = {"index": 0, "finish_reason": "stop"}  # no delta: some servers' last chunk
    model_server.answers = [
        [chunk({"content": "Sure."}), {**chunk(), "choices": [finish]}, chunk(usage=USAGE)]
    ]

    assert responder(model_server).respond(AI_CONTEXT, cancelled=threading.Event()) == Reply("Sure.", USAGE)


def test_an_answer_that_streams_past_its_time_is_given_up_like_a_slow_one(model_server):
    model_server.answers = [[chunk({"content": f"word{n} "}) for n in range(40)]]
    model_server.chunk_seconds = 0.3  # each chunk within the read timeout, the whole answer not
    slow = responder(model_server, timeout_seconds=1, connect_timeout_seconds=0.5, attempts=1)
    started = time.monotonic()

    with pytest.raises(ResponderError, match="took longer than 1 s"):
        slow.respond(AI_CONTEXT, cancelled=threading.Event())

    assert time.monotonic() - started <= slow.max_seconds + 0.5  # what the queue's timeouts allow for


def test_a_server_that_refuses_streamed_requests_is_asked_whole_from_then_on(model_server):
    model_server.answers = [(400, {"error": {"message": "stream_options is not supported"}}), OK]
    ai = responder(model_server)

    assert ai.respond(AI_CONTEXT, cancelled=threading.Event()) == Reply("Sure, which day?")
    assert ai.respond(AI_CONTEXT, cancelled=threading.Event()) == Reply("Sure, which day?")

    assert [bool(r["json"].get("stream")) for r in model_server.requests] == [True, False, False]


def test_a_cancelled_local_responder_stops_thinking():
    cancelled = threading.Event()
    threading.Timer(0.2, cancelled.set).start()
    started = time.monotonic()

    with pytest.raises(CallCancelled) as raised:
        LocalResponder(delay_seconds=5).respond(AI_CONTEXT, cancelled=cancelled)

    assert time.monotonic() - started < 5
    assert raised.value.usage["prompt_tokens"] > 0


def test_the_local_responder_hands_off_when_asked_for_a_human():
    answer = LocalResponder().respond({"messages": [{"role": "user", "content": "Can I talk to a human?"}]})

    assert isinstance(answer, Handoff) and answer.reason == "the person asked for a human"
    assert (
        LocalResponder()
        .respond({"messages": [{"role": "user", "content": "humanity"}]})
        .text.startswith("Thanks")
    )
