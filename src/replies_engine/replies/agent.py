"""Your own agent (RESPONDER=http): the AI context POSTed as JSON, signed, to AGENT_URL, which answers
`{"reply": "...", "handoff": {"reason": "..."}, "usage": {...}}` (handoff and usage optional)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .. import clock
from ..ports import Handoff, Reply
from ..signing import sign, verify_signature  # noqa: F401 (your agent's check, importable from here too)
from .http import ResponderError, RetryingHttpClient

if TYPE_CHECKING:
    import httpx2


class AgentResponder(RetryingHttpClient):
    """POSTs the AI context to an agent of yours; retried like the OpenAI responder (connection errors,
    timeouts, 429 and 5xx), each attempt with the same body, timestamp and signature."""

    def __init__(self, url: str, secret: str, **client: Any) -> None:
        super().__init__(**client)
        self.url = url
        self.secret = secret

    def respond(self, ai_context: dict[str, Any]) -> Reply | Handoff:
        body = json.dumps(ai_context, ensure_ascii=False).encode()  # serialized once: the bytes signed
        timestamp = str(int(clock.now()))
        headers = {
            "Content-Type": "application/json",
            "X-Replies-Timestamp": timestamp,
            "X-Replies-Signature": sign(self.secret, timestamp, body),
            "X-Replies-Batch-Id": str(ai_context.get("batch_id") or ""),  # the same on a retry
        }
        return self._answer(self.post(self.url, content=body, headers=headers))

    def _answer(self, response: httpx2.Response) -> Reply | Handoff:
        try:
            answer = response.json()
        except ValueError:
            raise ResponderError(f"{self.url}: the answer is not JSON: {response.text[:200]!r}") from None
        if not isinstance(answer, dict):
            raise ResponderError(f"{self.url}: the answer is not a JSON object: {response.text[:200]!r}")
        reply, handoff = answer.get("reply"), answer.get("handoff")
        if reply is None:
            reply = ""
        if not isinstance(reply, str):
            raise ResponderError(f'{self.url}: "reply" is not a string: {reply!r:.200}')
        if handoff is not None and not isinstance(handoff, dict):
            # a human was perhaps asked for: better retried than answered by the AI
            raise ResponderError(f'{self.url}: "handoff" is not an object: {handoff!r:.200}')
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else None  # its model's tokens
        if handoff is not None:
            return Handoff(str(handoff.get("reason") or "the agent asked for a human"), reply.strip(), usage)
        if not reply.strip():
            raise ResponderError(f'{self.url}: the reply is empty (and no "handoff")')
        return Reply(reply.strip(), usage)
