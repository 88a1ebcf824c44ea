"""Senders: how a reply reaches the person."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..ports import Outbox


class TransientSendError(RuntimeError):
    """The provider refused for now (throttled, unavailable, unreachable): nothing was sent, retry."""


class OutboxSender:
    """Keeps the reply in the outbox (the embedded engine; email until a mail adapter exists)."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def send(self, channel_type: str, to: str, from_: str, body: str, ai_context: dict[str, Any]) -> str:
        return self.outbox.add(
            {
                "channel_type": channel_type,
                "to": to,
                "from": from_,
                "body": body,
                "conversation_id": ai_context.get("conversation_id"),
                "batch_id": ai_context.get("batch_id"),
            }
        )

    def went_out(self, reply: dict[str, Any]) -> str | bool | None:
        found = self.outbox.find(reply["batch_id"])
        return found["message_id"] if found else found


class TwilioSender:
    """WhatsApp and SMS through Twilio's REST API (twilio's Client, imported only here: ~140 ms)."""

    def __init__(
        self, account_sid: str, auth_token: Callable[[], str | None], http_client: Any = None
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.http_client = http_client
        self._client = None

    TYPING_URL = "https://messaging.twilio.com/v2/Indicators/Typing.json"

    def client(self) -> Any:
        if self._client is None:
            from twilio.rest import Client

            self._client = Client(self.account_sid(), self.auth_token(), http_client=self.http_client)
        return self._client

    def typing(self, message_id: str) -> None:
        """WhatsApp's "typing…" (Twilio's typing indicator, public beta): the person sees we are on it;
        it also marks their message read. Raises on failure: callers treat it as best-effort."""
        response = self.client().request(
            "POST", self.TYPING_URL, data={"messageId": message_id, "channel": "whatsapp"}, timeout=3
        )
        if not 200 <= response.status_code < 300:
            raise RuntimeError(
                f"typing indicator: Twilio answered {response.status_code}: {response.text[:200]}"
            )

    def send(self, channel_type: str, to: str, from_: str, body: str, ai_context: dict[str, Any]) -> str:
        from twilio.base.exceptions import TwilioRestException

        try:
            return self.client().messages.create(to=to, from_=from_, body=body).sid
        except TwilioRestException as exc:
            if exc.status == 429 or exc.status >= 500:
                raise TransientSendError(f"Twilio answered {exc.status}: {exc.msg}") from exc
            raise
        except OSError as exc:  # requests' connection errors and timeouts are OSErrors
            raise TransientSendError(f"Twilio unreachable: {exc}") from exc

    def went_out(self, reply: dict[str, Any]) -> str | bool | None:
        """Twilio's newest messages from us to the person: one with this body, created since the reply
        was noted, is it (queued ones included: they have no date_sent yet). None if Twilio can't say."""
        from datetime import datetime, timedelta

        # Twilio's dates are whole seconds
        noted = datetime.fromisoformat(reply["timestamp"].replace("Z", "+00:00")) - timedelta(seconds=1)
        try:
            for message in self.client().messages.list(to=reply["to"], from_=reply["from"], limit=20):
                if (
                    message.body == reply["content"]
                    and message.date_created
                    and message.date_created >= noted
                ):
                    return message.sid
        except Exception:  # Twilio unreachable, or refusing: in doubt, so never sent twice
            return None
        return False
