"""Fakes only for what has no real counterpart here: Twilio's REST API, and servers on loopback that
answer as scripted (a media host, an OpenAI-compatible API)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
import urllib3
from twilio.http import HttpClient
from twilio.http.response import Response


class TwilioApi(HttpClient):
    """twilio's own Client talks to this instead of api.twilio.com: it records each request and answers
    like Twilio (a created message; the typing indicator with `typing_status`).

    `failures` scripts the next creates, one entry each: an error code (21610, 63016, …: Twilio's
    400 with that code), an HTTP status (429, 500, 503), "timeout" (the message IS created, then the
    answer times out) or "refused" (no connection: nothing created)."""

    def __init__(self, typing_status: int = 200, list_status: int = 200, failures=(), token=None) -> None:
        super().__init__(logging.getLogger("twilio-test"), False)
        self.token = token  # when set, another auth token gets Twilio's 401 (error 20003)
        self.typing_status = typing_status
        self.list_status = list_status
        self.failures = list(failures)
        self.requests: list[dict] = []
        self.created: list[dict] = []  # the messages "sent", newest first, as Twilio lists them

    @property
    def bodies(self) -> list[str]:
        """What reached the person, oldest first."""
        return [m["body"] for m in reversed(self.created)]

    def request(
        self,
        method,
        uri,
        params=None,
        data=None,
        headers=None,
        auth=None,
        timeout=None,
        allow_redirects=False,
    ):
        self.requests.append({"method": method, "uri": uri, "data": data, "auth": auth})
        if self.token and (not auth or auth[1] != self.token):
            return Response(401, json.dumps({"code": 20003, "message": "Authenticate", "status": 401}))
        if "Indicators/Typing" in uri:
            return Response(self.typing_status, json.dumps({"success": self.typing_status == 200}))
        if method == "GET":  # the list of messages, filtered by To and From
            found = [
                m for m in self.created if m["to"] == params.get("To") and m["from"] == params.get("From")
            ]
            page = {"messages": found, "next_page_uri": None, "page": 0, "page_size": 20}
            return Response(self.list_status, json.dumps(page if self.list_status == 200 else {}))
        failure = self.failures.pop(0) if self.failures else None
        if failure == "refused":
            raise requests.exceptions.ConnectionError(
                urllib3.exceptions.MaxRetryError(
                    None, uri, urllib3.exceptions.NewConnectionError(None, "refused")
                )
            )
        if isinstance(failure, int) and failure < 600:  # an HTTP status
            return Response(
                failure, json.dumps({"code": 20000 + failure, "message": "busy", "status": failure})
            )
        if isinstance(failure, int):  # a Twilio error code, with its 400
            return Response(400, json.dumps({"code": failure, "message": f"error {failure}", "status": 400}))
        message = {
            "sid": f"SMf{len(self.created) + 1:031x}",  # never one of the payloads' inbound sids
            "status": "queued",
            "body": data.get("Body", f"[template {data.get('ContentSid')}]"),
            "to": data["To"],
            "from": data["From"],
            "date_created": format_datetime(datetime.now(UTC)),
            "date_sent": None,  # queued: not sent yet
        }
        self.created.insert(0, message)
        if failure == "timeout":  # it went out; the answer did not come back
            raise requests.exceptions.ReadTimeout("read timed out")
        return Response(201, json.dumps(message))


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class OnLoopback:
    """A threaded HTTP server on 127.0.0.1, serving in a thread of its own: `.url`, `close()`."""

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Loopback(OnLoopback):
    """A real HTTP server on 127.0.0.1, in a thread. `routes` maps a path to its answers, in order,
    the last repeated: `(status, body)`, `(status, body, headers)`, or a function of the request that
    returns one. Every request is kept in `.requests` (method, path, headers, body, `at`)."""

    def __init__(self, routes: dict[str, list]) -> None:
        self.routes = routes
        self.requests: list[dict] = []
        lock = threading.Lock()
        loopback = self

        class Handler(QuietHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": self.rfile.read(length),
                    "at": time.monotonic(),
                }
                with lock:
                    loopback.requests.append(request)
                    answers = loopback.routes.get(self.path.split("?")[0]) or [(404, b"")]
                    answer = answers.pop(0) if len(answers) > 1 else answers[0]
                if callable(answer):
                    answer = answer(request)
                status, body, headers = (*answer, {}) if len(answer) == 2 else answer
                body = json.dumps(body).encode() if isinstance(body, dict) else body
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        self._serve(Handler)

    def to(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"].split("?")[0] == path]


class StreamingModel(OnLoopback):
    """An OpenAI-compatible `/v1/chat/completions` on 127.0.0.1 that takes `seconds` to answer: asked
    to stream, it sends its `words` one chunk at a time over that time (chunked, kept alive, the usage
    last, as OpenAI does); else the whole answer at the end. It counts `.requests` and `.closed`
    (streams the client went away from before their end)."""

    def __init__(self, seconds: float, words: int = 20) -> None:
        self.requests = self.closed = 0
        lock = threading.Lock()
        model = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    model.requests += 1
                prompt = sum(len(str(m.get("content") or "")) for m in body["messages"]) // 4
                usage = {"prompt_tokens": prompt, "completion_tokens": words, "total_tokens": prompt + words}
                if not body.get("stream"):
                    time.sleep(seconds)
                    text = " ".join(["word"] * words)
                    answer = {
                        "choices": [{"message": {"role": "assistant", "content": text}}],
                        "usage": usage,
                    }
                    data = json.dumps(answer).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                events = [{"choices": [{"index": 0, "delta": {"content": "word "}}]} for _ in range(words)]
                events += [
                    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                    {"choices": [], "usage": usage},
                ]
                try:
                    for n, event in enumerate([*events, "[DONE]"]):
                        time.sleep(seconds / words if n < words else 0)
                        self._chunk(
                            f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n".encode()
                        )
                    self._chunk(b"")
                except (BrokenPipeError, ConnectionResetError):
                    with lock:
                        model.closed += 1
                    self.close_connection = True

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        self._serve(Handler)


def slowly(seconds: float, answer: tuple) -> Callable[[dict], tuple]:
    """An answer that takes `seconds` to come."""

    def answer_late(request: dict) -> tuple:
        time.sleep(seconds)
        return answer

    return answer_late
