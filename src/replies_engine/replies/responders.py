"""Responders: what produces the reply to a batch (the AI stage)."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any

from ..conversation import WITHHELD
from ..ports import CallCancelled, Handoff, Reply
from .http import IncompleteAnswer, OpenAICompatibleClient, ResponderError
from .streaming import read_stream

if TYPE_CHECKING:
    import httpx2

__all__ = ["LocalResponder", "OpenAIResponder", "ResponderError"]

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You answer people who replied to a company's message on WhatsApp, SMS or email. "
    "Answer their latest messages together, briefly and kindly, in their language. "
    "When they ask for a human, or you cannot help, call hand_off_to_human."
)
HANDOFF_TOOL: dict[str, Any] = {
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


class LocalResponder:
    """Deterministic, offline: acknowledges the batch, or hands it to a human when a message asks for
    one ("can I talk to a human?"). `delay_seconds` simulates thinking time, and the usage it reports
    a model's (`prompt_tokens` estimated), so that the benches can count what calls cost."""

    cancellable = True

    def __init__(self, delay_seconds: float = 0.0) -> None:
        self.delay_seconds = delay_seconds

    def respond(
        self, ai_context: dict[str, Any], cancelled: threading.Event | None = None
    ) -> Reply | Handoff:
        thread = [*ai_context.get("history", []), *ai_context["messages"]]
        prompt = prompt_tokens([{"content": SYSTEM_PROMPT}, *thread])
        if self.delay_seconds:
            started = time.monotonic()
            if cancelled is not None and cancelled.wait(self.delay_seconds):
                done = min(1.0, (time.monotonic() - started) / self.delay_seconds)
                raise CallCancelled(_usage(prompt, round(done * 12)))  # a reply's dozen tokens, in part
            if cancelled is None:
                time.sleep(self.delay_seconds)
        if any(_ASKS_FOR_A_HUMAN.search(m.get("content") or "") for m in ai_context["messages"]):
            return Handoff("the person asked for a human", HANDOFF_TEXT, _usage(prompt, 20))
        count = len(ai_context["messages"])
        text = f"Thanks, we received your {count} message{'' if count == 1 else 's'}."
        return Reply(text, _usage(prompt, estimated_tokens(text)))


class OpenAIResponder(OpenAICompatibleClient):
    """An OpenAI-compatible chat completions endpoint (OpenAI, or any server that speaks its API).
    Given `cancelled`, it streams the answer, and closes the request once that is set."""

    path = "/chat/completions"
    cancellable = True
    streams = True  # False once the server refused a streamed request and took the same one whole

    def respond(
        self, ai_context: dict[str, Any], cancelled: threading.Event | None = None
    ) -> Reply | Handoff:
        """The model's reply to the batch's messages, given the conversation's history (the system
        prompt: the context's `instructions`, else ours); a Handoff when it calls `hand_off_to_human`."""
        chat: list[dict[str, Any]] = [
            {"role": "system", "content": ai_context.get("instructions") or SYSTEM_PROMPT}
        ]
        thread = [*ai_context.get("history", []), *ai_context["messages"]]
        for message in thread:
            if entry := _chat_entry(message, thread):
                chat.append(entry)
        body = {"model": self.model, "messages": chat, "tools": [HANDOFF_TOOL]}
        if cancelled is None or not self.streams:
            return self._read(self.post(self.url, json=body, headers=self.headers))
        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
        prompt = prompt_tokens(chat)
        try:
            return self.post(
                self.url,
                json=streamed,
                headers=self.headers,
                cancelled=cancelled,
                stream=lambda response, ends: self._streamed(response, cancelled, ends, prompt),
            )
        except CallCancelled as given_up:  # between attempts: the failed one read the prompt
            spent = given_up.usage or (_usage(prompt, 0) if given_up.asked else None)
            raise CallCancelled(spent, given_up.asked) from None
        except ResponderError as exc:
            if exc.status not in (400, 422):  # what a server says of parameters it does not take
                raise
            answer = self._read(self.post(self.url, json=body, headers=self.headers))  # its 4xx: raised
            logger.warning(
                "the model refuses streamed requests: its calls are no longer streamed, nor cancelled",
                extra={"url": self.url, "error": str(exc)},
            )
            self.streams = False
            return answer

    def _read(self, response: httpx2.Response) -> Reply | Handoff:
        try:
            answer = response.json()
            message = answer["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ResponderError(f"{self.url}: malformed answer: {exc!r}") from exc
        return self._answer(message, answer.get("usage"))

    def _streamed(
        self, response: httpx2.Response, cancelled: threading.Event, ends: float, prompt: int
    ) -> Reply | Handoff:
        """The answer from its chunks (`streaming.py`). Cancelled: CallCancelled with what it cost (the
        server's usage when it came, else estimated). A server that answers whole is read as usual."""
        import httpx2

        if not response.headers.get("Content-Type", "").lower().startswith("text/event-stream"):
            response.read()
            return self._read(response)
        try:
            answer = read_stream(response, cancelled, ends)
        except ResponderError as exc:
            raise ResponderError(f"{self.url}: {exc}") from exc
        if cancelled.is_set():
            raise CallCancelled(answer.usage or _usage(prompt, estimated_tokens("".join(answer.text))))
        if answer.complete:
            return self._answer(answer.message, answer.usage)
        if answer.cut_off:
            raise httpx2.ReadTimeout(f"the answer took longer than {self.timeout_seconds:g} s")
        raise IncompleteAnswer("the answer broke off before its end")

    def _answer(self, message: Any, usage: Any) -> Reply | Handoff:
        """A Reply, or a Handoff when the model called `hand_off_to_human`, from its `message`."""
        try:
            text = message.get("content") or ""
            calls = message.get("tool_calls") or []
        except AttributeError as exc:
            raise ResponderError(f"{self.url}: malformed answer: {exc!r}") from exc
        usage = usage if isinstance(usage, dict) else None
        for call in calls:
            function = (call or {}).get("function") or {}
            if function.get("name") == HANDOFF_TOOL["function"]["name"]:
                try:
                    reason = json.loads(function.get("arguments") or "{}").get("reason")
                except (ValueError, AttributeError):
                    reason = None
                last_word = text.strip() if isinstance(text, str) else ""
                return Handoff(str(reason or "the AI asked for a human"), last_word, usage)
        if not isinstance(text, str) or not text.strip():
            raise ResponderError(f"{self.url}: the reply is empty")
        return Reply(text.strip(), usage)


IMAGE_TOKENS = 765  # an image as OpenAI counts one of 1024 × 1024 pixels, seen in detail


def estimated_tokens(text: str) -> int:
    """A model's tokens for `text`, estimated (about four characters a token in English): what a
    cancelled call cost, since a model reports its counts only at the end."""
    return max(1, round(len(text) / 4))


def prompt_tokens(chat: list[dict[str, Any]]) -> int:
    """The estimated tokens of a chat's messages: their texts, and IMAGE_TOKENS an image (not its
    data URL's characters)."""
    total = 0
    for message in chat:
        content = message.get("content") or ""
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        for part in parts:
            is_text = part.get("type") == "text"
            total += estimated_tokens(part.get("text") or "") if is_text else IMAGE_TOKENS
    return total


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "estimated": True,
    }


def _chat_entry(message: dict[str, Any], thread: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A thread's message as the model reads it: the person's (its files described, its images shown
    to a model that sees), ours (the AI's and a human colleague's), and the thread's events (a
    hand-off, a hand-back) as system notes."""
    from . import media  # here: the webhook stage builds a responder but never asks it

    role = message.get("role")
    if message.get("no_reply") in WITHHELD:
        return None  # what the mail service judged spam or a virus: for a human's eyes only
    content = media.describe(message, thread) if role == "user" else message.get("content")
    if not content:
        return None
    if role == "user":
        if shown := media.images(message):
            parts = [{"type": "image_url", "image_url": {"url": url}} for url in shown]
            return {"role": "user", "content": [{"type": "text", "text": content}, *parts]}
        return {"role": "user", "content": content}
    if role in ("assistant", "agent"):
        return {"role": "assistant", "content": content}
    if role == "event":
        return {"role": "system", "content": content}
    return None
