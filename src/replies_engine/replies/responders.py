"""Responders: what produces the reply to a batch (the AI stage)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

SYSTEM_PROMPT = (
    "You answer people who replied to a company's message on WhatsApp, SMS or email. "
    "Answer their latest messages together, briefly and kindly, in their language."
)


class ResponderError(RuntimeError):
    """The responder could not produce a reply (the batch is retried)."""


class LocalResponder:
    """Deterministic, offline: acknowledges the batch. `delay_seconds` simulates thinking time."""

    def __init__(self, delay_seconds: float = 0.0) -> None:
        self.delay_seconds = delay_seconds

    def respond(self, ai_context: dict[str, Any]) -> str:
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        count = len(ai_context["messages"])
        return f"Thanks, we received your {count} message{'' if count == 1 else 's'}."


class OpenAIResponder:
    """An OpenAI-compatible chat completions endpoint (OpenAI, or any server that speaks its API)."""

    def __init__(self, base_url: str, api_key: str | None, model: str, timeout_seconds: float = 30) -> None:
        self.url = f"{base_url}/chat/completions"
        self.api_key = api_key
        self.model = model
        self.timeout_seconds = timeout_seconds

    def respond(self, ai_context: dict[str, Any]) -> str:
        chat = [{"role": "system", "content": SYSTEM_PROMPT}]
        for message in [*ai_context.get("history", []), *ai_context["messages"]]:
            if message.get("content") and message.get("role") in ("user", "assistant"):
                chat.append({"role": message["role"], "content": message["content"]})
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.url, data=json.dumps({"model": self.model, "messages": chat}).encode(), headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                answer = json.load(response)
            text = answer["choices"][0]["message"]["content"]
        except (urllib.error.URLError, TimeoutError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise ResponderError(f"{self.url}: {exc}") from exc
        if not isinstance(text, str) or not text.strip():
            raise ResponderError(f"{self.url}: the reply is empty")
        return text.strip()
