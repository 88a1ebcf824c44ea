"""Hand-off notices to a webhook (HANDOFF_WEBHOOK_URL): the notice as JSON, its `text` at the top level so
that a Slack (or Mattermost, Teams workflow) incoming webhook shows it as is, signed like the requests to
your agent (`signing.py`) when HANDOFF_WEBHOOK_SECRET is set."""

from __future__ import annotations

import json
from typing import Any

from .. import clock
from ..signing import sign

TIMEOUT_SECONDS = 5


class NoticeError(RuntimeError):
    """The notice did not go: the queue gives it again, and dead-letters it in the end."""


class WebhookNotifier:
    def __init__(self, url: str, secret: str | None) -> None:
        self.url, self.secret = url, secret

    def notify(self, notice: dict[str, Any]) -> None:
        import httpx2

        body = json.dumps(notice, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "replies-engine"}
        if self.secret:
            timestamp = str(int(clock.now()))
            headers.update(
                {"X-Replies-Timestamp": timestamp, "X-Replies-Signature": sign(self.secret, timestamp, body)}
            )
        try:
            answer = httpx2.post(self.url, content=body, headers=headers, timeout=TIMEOUT_SECONDS)
        except httpx2.HTTPError as exc:
            raise NoticeError(f"the hand-off webhook did not answer: {exc}") from exc
        if answer.status_code >= 300:
            raise NoticeError(f"the hand-off webhook answered {answer.status_code}")
