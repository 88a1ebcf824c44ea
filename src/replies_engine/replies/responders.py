"""Responders: what produces the reply to a batch (the AI stage)."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from typing import TYPE_CHECKING, Any

from ..ports import Handoff

if TYPE_CHECKING:
    import httpx2

SYSTEM_PROMPT = (
    "You answer people who replied to a company's message on WhatsApp, SMS or email. "
    "Answer their latest messages together, briefly and kindly, in their language. "
    "When they ask for a human, or you cannot help, call hand_off_to_human."
)
HANDOFF_TOOL = {
    "type": "function",
    "function": {
        "name": "hand_off_to_human",
        "description": "Hand the conversation to a human colleague, who answers from then on.",
        "parameters": {
            "type": "object",
            "properties": {"reason": {"type": "string", "description": "Why, for the colleague."}},
            "required": ["reason"],
        },
    },
}
HANDOFF_TEXT = "I'm handing you over to a colleague, who will answer you here shortly."
_ASKS_FOR_A_HUMAN = re.compile(r"\b(human|agent|mensch|humano|humain)\b", re.IGNORECASE)  # the demo's rule
BACKOFF_SECONDS = 0.5  # before the 2nd attempt; doubled before each next one, with jitter
MAX_BACKOFF_SECONDS = 20.0  # cap on any wait between attempts, a server's Retry-After included


class ResponderError(RuntimeError):
    """The responder could not produce a reply (the batch is retried)."""


class LocalResponder:
    """Deterministic, offline: acknowledges the batch, or hands it to a human when a message asks for
    one ("can I talk to a human?"). `delay_seconds` simulates thinking time."""

    def __init__(self, delay_seconds: float = 0.0) -> None:
        self.delay_seconds = delay_seconds

    def respond(self, ai_context: dict[str, Any]) -> str | Handoff:
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        if any(_ASKS_FOR_A_HUMAN.search(m.get("content") or "") for m in ai_context["messages"]):
            return Handoff("the person asked for a human", HANDOFF_TEXT)
        count = len(ai_context["messages"])
        return f"Thanks, we received your {count} message{'' if count == 1 else 's'}."


class RetryingHttpClient:
    """POSTs over one pooled httpx2 client (connections reused, safe to share between threads). An
    attempt that fails on a connection error, a timeout, 429 or 5xx is retried after a backoff (the
    server's Retry-After when it sends one), up to `attempts` in all; other errors are not retried."""

    def __init__(
        self,
        timeout_seconds: float = 30,
        attempts: int = 3,
        connect_timeout_seconds: float = 5,
        max_connections: int = 64,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.timeout_seconds = timeout_seconds
        self.attempts = attempts
        self.connect_timeout_seconds = connect_timeout_seconds
        self.max_connections = max_connections  # one per reply in flight: none waits for a connection
        self._http: httpx2.Client | None = None  # made on first use: importing httpx2 slows a cold start
        self._lock = threading.Lock()

    @property
    def max_seconds(self) -> float:
        """Worst-case duration of a `post`: every attempt connecting and waiting for the answer up to
        its timeouts, and the longest wait between attempts (with at most `max_connections` calls at
        once on this instance: more would also wait for a free connection)."""
        attempt = self.connect_timeout_seconds + self.timeout_seconds
        return self.attempts * attempt + (self.attempts - 1) * MAX_BACKOFF_SECONDS

    def post(self, url: str, **request: Any) -> httpx2.Response:
        """The first successful answer to `request` (httpx2's `headers`, `json`, `content`, `files`…);
        ResponderError when every attempt failed or one failed for good."""
        import httpx2

        for attempt in range(1, self.attempts + 1):
            retry_after = None
            try:
                response = self._client().post(url, **request)
            except (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
            except httpx2.HTTPError as exc:
                raise ResponderError(f"{url}: {type(exc).__name__}: {exc}") from exc
            else:
                if response.is_success:
                    return response
                failure = f"HTTP {response.status_code} {response.text[:200]!r}"
                if response.status_code != 429 and response.status_code < 500:
                    raise ResponderError(f"{url}: {failure}")
                retry_after = _retry_after(response.headers.get("Retry-After"))
            if attempt == self.attempts:
                break
            if retry_after is None:
                retry_after = BACKOFF_SECONDS * 2 ** (attempt - 1) * random.uniform(0.5, 1)
            time.sleep(min(retry_after, MAX_BACKOFF_SECONDS))
        raise ResponderError(f"{url}: {failure} (after {self.attempts} attempts)")

    def _client(self) -> httpx2.Client:
        with self._lock:
            if self._http is None:
                import httpx2

                self._http = httpx2.Client(
                    timeout=httpx2.Timeout(self.timeout_seconds, connect=self.connect_timeout_seconds),
                    limits=httpx2.Limits(
                        max_connections=self.max_connections, max_keepalive_connections=self.max_connections
                    ),
                )
            return self._http


class OpenAIResponder(RetryingHttpClient):
    """An OpenAI-compatible chat completions endpoint (OpenAI, or any server that speaks its API)."""

    def __init__(self, base_url: str, api_key: str | None, model: str, **client: Any) -> None:
        super().__init__(**client)
        self.url = f"{base_url}/chat/completions"
        self.api_key = api_key
        self.model = model

    def respond(self, ai_context: dict[str, Any]) -> str | Handoff:
        """The model's reply to the batch's messages, given the conversation's history; a Handoff when
        it calls `hand_off_to_human`."""
        chat = [{"role": "system", "content": SYSTEM_PROMPT}]
        for message in [*ai_context.get("history", []), *ai_context["messages"]]:
            if entry := _chat_entry(message):
                chat.append(entry)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {"model": self.model, "messages": chat, "tools": [HANDOFF_TOOL]}
        return self._text(self.post(self.url, json=body, headers=headers))

    def _text(self, response: httpx2.Response) -> str | Handoff:
        try:
            message = response.json()["choices"][0]["message"]
            text = message.get("content") or ""
            calls = message.get("tool_calls") or []
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ResponderError(f"{self.url}: malformed answer: {exc!r}") from exc
        for call in calls:
            function = (call or {}).get("function") or {}
            if function.get("name") == HANDOFF_TOOL["function"]["name"]:
                try:
                    reason = json.loads(function.get("arguments") or "{}").get("reason")
                except (ValueError, AttributeError):
                    reason = None
                return Handoff(
                    str(reason or "the AI asked for a human"), text.strip() if isinstance(text, str) else ""
                )
        if not isinstance(text, str) or not text.strip():
            raise ResponderError(f"{self.url}: the reply is empty")
        return text.strip()


def _chat_entry(message: dict[str, Any]) -> dict[str, str] | None:
    """A thread's message as the model reads it: the person's, ours (the AI's and a human
    colleague's), and the thread's events (a hand-off, a hand-back) as system notes."""
    content, role = message.get("content"), message.get("role")
    if not content:
        return None
    if role in ("user", "assistant"):
        return {"role": role, "content": content}
    if role == "agent":
        return {"role": "assistant", "content": content}
    if role == "event":
        return {"role": "system", "content": content}
    return None


def _retry_after(value: str | None) -> float | None:
    """The seconds a Retry-After header asks to wait (a number or an HTTP date); None if absent or bad."""
    from email.utils import parsedate_to_datetime

    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
