"""Responders: what produces the reply to a batch (the AI stage)."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import TYPE_CHECKING, Any

from ..conversation import WITHHELD
from ..ports import CallCancelled, Handoff, Reply
from .http import OpenAICompatibleClient, ResponderError

if TYPE_CHECKING:
    import httpx2

__all__ = ["LocalResponder", "OpenAIResponder", "ResponderError"]

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
    a model's (`estimated_tokens`), so that the benches can count what calls cost."""

    cancellable = True

    def __init__(self, delay_seconds: float = 0.0) -> None:
        self.delay_seconds = delay_seconds

    def respond(
        self, ai_context: dict[str, Any], cancelled: threading.Event | None = None
    ) -> Reply | Handoff:
        prompt = estimated_tokens(json.dumps([*ai_context.get("history", []), *ai_context["messages"]]))
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
        if cancelled is None:
            return self._read(self.post(self.url, json=body, headers=self.headers))
        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
        prompt = estimated_tokens(json.dumps(chat, ensure_ascii=False))
        return self.post(
            self.url,
            json=streamed,
            headers=self.headers,
            stream=lambda response: self._streamed(response, cancelled, prompt),
        )

    def _read(self, response: httpx2.Response) -> Reply | Handoff:
        try:
            answer = response.json()
            message = answer["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ResponderError(f"{self.url}: malformed answer: {exc!r}") from exc
        return self._answer(message, answer.get("usage"))

    def _streamed(
        self, response: httpx2.Response, cancelled: threading.Event, prompt: int
    ) -> Reply | Handoff:
        """The answer from its server-sent chunks (`delta`s, then `usage`), checked for `cancelled`
        at each: a cancelled call raises CallCancelled with its tokens estimated. A server that
        answers whole (it does not stream) is read as usual."""
        if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
            response.read()
            return self._read(response)
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        usage = None
        for line in response.iter_lines():
            if cancelled.is_set():
                raise CallCancelled(_usage(prompt, estimated_tokens("".join(text))))
            if not line.startswith("data:") or (data := line[5:].strip()) == "[DONE]":
                continue  # comments, keep-alives, the end
            try:
                chunk = json.loads(data)
                usage = chunk.get("usage") or usage
                delta = chunk["choices"][0]["delta"] if chunk.get("choices") else {}
                text.append(delta.get("content") or "")
                for call in delta.get("tool_calls") or []:
                    whole = calls.setdefault(
                        call.get("index", 0), {"function": {"name": "", "arguments": ""}}
                    )
                    for key, part in (call.get("function") or {}).items():
                        whole["function"][key] += part or ""
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                raise ResponderError(f"{self.url}: malformed chunk: {exc!r}") from exc
        return self._answer({"content": "".join(text), "tool_calls": list(calls.values())}, usage)

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


def estimated_tokens(text: str) -> int:
    """A model's tokens for `text`, estimated (about four characters a token in English): what a
    cancelled call cost, since a model reports its counts only at the end."""
    return max(1, round(len(text) / 4))


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
