"""A chat completion read as it streams (OpenAI's server-sent events), so that it can be given up
mid-way: how the OpenAI responder answers with SPECULATE=on. The chunks are put together into the
message a whole answer would have had; a watcher shuts the connection once the call is cancelled or
out of time, so that a read waiting for the next token ends at once."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from .http import IncompleteAnswer, ResponderError

if TYPE_CHECKING:
    import httpx2


class StreamedAnswer:
    """The chunks of a chat completion stream, put together: text, tool calls, usage."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.complete = False  # a choice finished, or `[DONE]` came: not an answer that broke off
        self.cut_off = False  # the connection was shut before the end: cancelled, or out of time

    @property
    def message(self) -> dict[str, Any]:
        """As in a whole answer's `choices[0].message`."""
        return {"content": "".join(self.text), "tool_calls": list(self.calls.values())}

    def feed(self, line: str) -> None:
        """One whole line of the stream. An `error` sent mid-way is an IncompleteAnswer (asked again);
        a chunk that cannot be read, a ResponderError."""
        if not line.startswith("data:"):
            return  # comments, keep-alives, blank lines between events
        data = line[5:].strip()
        if data == "[DONE]":
            self.complete = True
            return
        try:
            chunk = json.loads(data)
            if chunk.get("error"):
                raise IncompleteAnswer(f"the model failed mid-answer: {str(chunk['error'])[:200]}")
            if isinstance(chunk.get("usage"), dict):  # the last chunk's, with include_usage
                self.usage = chunk["usage"]
            for choice in chunk.get("choices") or []:  # null or [] in the usage chunk
                delta = choice.get("delta") or {}
                self.text.append(delta.get("content") or "")
                for call in delta.get("tool_calls") or []:
                    self._add(call)
                self.complete |= bool(choice.get("finish_reason"))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ResponderError(f"malformed chunk: {exc!r}: {data[:200]!r}") from exc

    def _add(self, call: dict[str, Any]) -> None:
        """A piece of a tool call: its name and arguments come in parts, by `index`."""
        whole = self.calls.setdefault(call.get("index", 0), {"function": {"name": "", "arguments": ""}})
        for key in ("name", "arguments"):
            part = (call.get("function") or {}).get(key)
            if isinstance(part, str):
                whole["function"][key] += part


def read_stream(response: httpx2.Response, cancelled: threading.Event, ends: float) -> StreamedAnswer:
    """What arrived of the answer by the end of the body (read to its end, so that the connection
    is kept for the next call), by the time `cancelled` was set, or by `ends` (`time.monotonic()`);
    `cut_off` tells which, with `complete`. Only whole lines are read: a body that ends mid-line
    broke off. Errors of the connection are raised, unless it was shut here."""
    import httpx2

    answer, rest = StreamedAnswer(), ""
    with _cut_off(response, cancelled, ends) as cut:
        try:
            for text in response.iter_text():
                if cancelled.is_set() or cut.is_set():
                    break
                *lines, rest = (rest + text).split("\n")
                for line in lines:
                    answer.feed(line.rstrip("\r"))
        except (httpx2.HTTPError, OSError):
            if not cut.is_set():
                raise
    answer.cut_off = cut.is_set()
    return answer


@contextmanager
def _cut_off(response: httpx2.Response, cancelled: threading.Event, ends: float) -> Iterator[threading.Event]:
    """While the body is read: once `cancelled` is set or `ends` has passed, the connection is shut
    (the server sees the request closed). Yields the Event set when it was."""
    cut, done, lock = threading.Event(), threading.Event(), threading.Lock()

    def watch() -> None:  # asleep until the cancel or the end of the attempt's time; then done, or not
        cancelled.wait(max(0.0, ends - time.monotonic()))
        with lock:
            if not done.is_set():  # never a connection whose answer was read whole (it is reused)
                cut.set()
                _shut(response)

    threading.Thread(target=watch, name="stream-cut-off", daemon=True).start()
    try:
        yield cut
    finally:
        with lock:
            done.set()  # the watcher, still asleep, will do nothing


def _shut(response: httpx2.Response) -> None:
    """Shut the response's socket both ways: a read waiting on it returns, the server sees it closed.
    The plain socket's shutdown, under TLS too (the TLS layer's own would need the reading thread)."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is None:
        return
    with suppress(OSError):  # closed already
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
