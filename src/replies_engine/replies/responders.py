"""Responders: what produces the reply to a batch (the AI stage)."""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

from ..conversation import WITHHELD
from ..ports import Handoff, Reply
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


class OpenAIResponder(OpenAICompatibleClient):
    """An OpenAI-compatible chat completions endpoint (OpenAI, or any server that speaks its API)."""

    path = "/chat/completions"

    def respond(self, ai_context: dict[str, Any]) -> Reply | Handoff:
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
        return self._text(self.post(self.url, json=body, headers=self.headers))

    def _text(self, response: httpx2.Response) -> Reply | Handoff:
        try:
            answer = response.json()
            message = answer["choices"][0]["message"]
            text = message.get("content") or ""
            calls = message.get("tool_calls") or []
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ResponderError(f"{self.url}: malformed answer: {exc!r}") from exc
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else None
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
