"""Senders (the `Sender` port): the outbox, SMTP and Twilio. Each sends one part of a delivery note and
says how a send failed in the port's terms (`ports.SendError`): Twilio's error codes become the kinds
the engine acts on (opted out, WhatsApp's window closed), and stay the `code` it records."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..channels import WINDOW_CLOSED_CODE
from ..mail import reply_subject
from ..ports import (
    PERSON_OPTED_OUT,
    WINDOW_CLOSED,
    AmbiguousSendError,
    Outbox,
    PermanentSendError,
    TransientSendError,
)

# Twilio's codes that mean something to the engine (`SendError.kind`)
_KINDS = {
    "21610": PERSON_OPTED_OUT,
    "63014": PERSON_OPTED_OUT,
    WINDOW_CLOSED_CODE: WINDOW_CLOSED,
}  # STOP; blocked
_TRANSIENT_CODES = frozenset({"20429", "20500", "20503", "20003"})  # 20003: credentials (a rotated token)
_GATEWAY_STATUSES = frozenset({502, 504})  # a gateway's failure: Twilio may have created the message


class OutboxSender:
    """Keeps the reply in the outbox (the embedded engine; email with EMAIL_SENDER=outbox), one
    entry per part."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def send(self, note: dict[str, Any], part: int) -> str:
        return self.outbox.add(
            {
                "channel_type": note["channel_type"],
                "to": note.get("to"),
                "from": note.get("from"),
                "body": note["texts"][part],
                "conversation_id": note.get("conversation_id"),
                "batch_id": note["batch_id"],
                "part": part,
                "part_count": len(note["texts"]),
                **(_mail_headers(note) if note["channel_type"] == "email" else {}),
            }
        )

    def went_out(self, note: dict[str, Any], part: int) -> str | bool | None:
        found = self.outbox.find(note["batch_id"], part)
        if isinstance(found, dict):
            return str(found["message_id"])
        return None if found is None else False


def _mail_headers(note: dict[str, Any]) -> dict[str, Any]:
    """What a system of yours needs to send an outbox entry as `reply_email` would, in their thread."""
    headers = {"subject": reply_subject(note.get("subject")), "cc": note.get("cc") or []}
    if note.get("in_reply_to"):
        headers |= {
            "in_reply_to": note["in_reply_to"],
            "references": note.get("references") or [note["in_reply_to"]],
        }
    return headers


def reply_email(note: dict[str, Any], part: int) -> Any:
    """Part `part` of the note as an email in the person's thread (`mail.py` decided From, To, Cc and
    the thread): `In-Reply-To` their message's Message-ID, `References` the chain with it last, the
    subject theirs with "Re: " (once), our own Message-ID on our domain."""
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid, parseaddr

    message = EmailMessage()
    message["From"], message["To"] = note["from"], note["to"]
    if note.get("cc"):
        message["Cc"] = ", ".join(note["cc"])
    message["Subject"] = reply_subject(note.get("subject"))
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=parseaddr(note["from"])[1].rpartition("@")[2] or None)
    if note.get("in_reply_to"):
        message["In-Reply-To"] = note["in_reply_to"]
        message["References"] = " ".join(note.get("references") or [note["in_reply_to"]])
    message.set_content(note["texts"][part])
    return message


class SmtpSender:
    """Email through an SMTP server (SMTP_URL): `smtp://user:password@host:587` (STARTTLS when the
    server offers it) or `smtps://…:465` (TLS from the start). The reply goes in the person's thread:
    `In-Reply-To` and `References` name their message, the subject is theirs with "Re: ". SMTP cannot
    be asked afterwards whether a message went: a send in doubt is recorded as such, never resent."""

    def __init__(self, url: str, timeout_seconds: float = 10) -> None:
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(f"SMTP_URL={url!r}: expected smtp://[user:password@]host[:port] or smtps://…")
        self.tls = parts.scheme == "smtps"
        self.host, self.port = parts.hostname, parts.port or (465 if self.tls else 587)
        self.user, self.password = unquote(parts.username or ""), unquote(parts.password or "")
        self.timeout_seconds = timeout_seconds

    def send(self, note: dict[str, Any], part: int) -> str:
        import smtplib
        import ssl

        message = reply_email(note, part)
        sent = False
        try:
            smtp_class: Any = smtplib.SMTP_SSL if self.tls else smtplib.SMTP
            tls = {"context": ssl.create_default_context()} if self.tls else {}
            with smtp_class(self.host, self.port, timeout=self.timeout_seconds, **tls) as smtp:
                if not self.tls:
                    smtp.ehlo()
                    if smtp.has_extn("starttls"):
                        smtp.starttls(context=ssl.create_default_context())
                if self.user:
                    smtp.login(self.user, self.password)
                sent = True  # from here on, the server may have the message
                smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reason = next(iter(exc.recipients.values()))
            raise (TransientSendError if 400 <= code < 500 else PermanentSendError)(
                f"SMTP refused the recipient: {code} {reason!r}", str(code)
            ) from exc
        except smtplib.SMTPResponseException as exc:
            kind = TransientSendError if 400 <= exc.smtp_code < 500 else PermanentSendError
            raise kind(f"SMTP answered {exc.smtp_code} {exc.smtp_error!r}", str(exc.smtp_code)) from exc
        except (OSError, smtplib.SMTPException) as exc:
            if sent:
                raise AmbiguousSendError(f"SMTP failed during the send: {exc}") from exc
            raise TransientSendError(f"SMTP unreachable: {exc}") from exc
        return message["Message-ID"]

    def went_out(self, note: dict[str, Any], part: int) -> None:
        return None


class TwilioSender:
    """WhatsApp and SMS through Twilio's REST API (twilio's Client, imported only here: ~140 ms). Every
    call has a timeout: one hung call must not stall the sweep that serves every conversation."""

    TYPING_URL = "https://messaging.twilio.com/v2/Indicators/Typing.json"

    def __init__(
        self,
        account_sid: Callable[[], str | None],
        auth_token: Callable[..., str | None],  # auth_token(refresh=True): read it again
        status_callback: str | None = None,
        http_client: Any = None,
        timeout_seconds: float = 10,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.status_callback = status_callback  # where Twilio reports delivery (`POST /twilio/status`)
        self.http_client = http_client
        self.timeout_seconds = timeout_seconds
        self._client = None

    def client(self) -> Any:
        """twilio's Client with the current credentials (a rotated token makes a new one)."""
        if self._client is not None and self._client.password != self.auth_token():
            self._client = None
        if self._client is None:
            from twilio.http.http_client import TwilioHttpClient
            from twilio.rest import Client

            http_client = self.http_client or TwilioHttpClient(timeout=self.timeout_seconds)
            self._client = Client(self.account_sid(), self.auth_token(), http_client=http_client)
        return self._client

    def _rotated(self) -> bool:
        """After a 401: whether the token changed since the refused client was made (`client()` then
        makes a new one)."""
        refused = self._client.password if self._client is not None else None
        return self.auth_token(refresh=True) != refused

    def typing(self, message_id: str) -> None:
        """WhatsApp's "typing…" (Twilio's typing indicator, public beta; it shows for 25 s): the person
        sees we are on it; it also marks their message read. Raises on failure: callers treat it as
        best-effort."""
        response = self.client().request(
            "POST", self.TYPING_URL, data={"messageId": message_id, "channel": "whatsapp"}, timeout=3
        )
        if not 200 <= response.status_code < 300:
            raise RuntimeError(
                f"typing indicator: Twilio answered {response.status_code}: {response.text[:200]}"
            )

    def send(self, note: dict[str, Any], part: int) -> str:
        from twilio.base.exceptions import TwilioRestException

        content: dict[str, Any] = {"body": note["texts"][part]}
        if note.get("template"):  # WhatsApp's 24-hour window closed: the approved template instead
            content = {"content_sid": note["template"]}
            if note.get("template_variables"):
                content["content_variables"] = json.dumps(note["template_variables"])
        if self.status_callback:
            content["status_callback"] = self.status_callback

        def create() -> str:
            return self.client().messages.create(to=note["to"], from_=note["from"], **content).sid

        try:
            try:
                return create()
            except TwilioRestException as exc:
                if exc.status == 401 and self._rotated():
                    return create()  # a 401 sent nothing: again at once, with the rotated token
                raise
        except TwilioRestException as exc:
            code = str(exc.code or exc.status)
            message = f"Twilio answered {exc.status} (error {code}): {exc.msg}"
            if exc.status in _GATEWAY_STATUSES:
                raise AmbiguousSendError(message, code) from exc
            if exc.status in (401, 429) or exc.status >= 500 or code in _TRANSIENT_CODES:
                raise TransientSendError(message, code) from exc
            raise PermanentSendError(message, code, _KINDS.get(code)) from exc
        except OSError as exc:  # requests' connection errors and timeouts are OSErrors
            if _before_sending(exc):
                raise TransientSendError(f"Twilio unreachable: {exc}") from exc
            raise AmbiguousSendError(f"no answer from Twilio after the request: {exc}") from exc

    def went_out(self, note: dict[str, Any], part: int) -> str | bool | None:
        """Twilio's newest messages from us to the person: one with this part's body (any, for a
        template), created since the reply was noted, is it (queued ones included: they have no
        date_sent yet). None if Twilio can't say."""
        from datetime import datetime, timedelta

        # Twilio's dates are whole seconds
        noted = datetime.fromisoformat(note["timestamp"].replace("Z", "+00:00")) - timedelta(seconds=1)
        body = None if note.get("template") else note["texts"][part].strip()
        recorded = set(note.get("parts") or [])  # a part whose text repeats an earlier one's is not it
        try:
            for message in self.client().messages.list(to=note["to"], from_=note["from"], limit=20):
                if (
                    message.sid not in recorded
                    and (body is None or (message.body or "").strip() == body)
                    and message.date_created
                    and message.date_created >= noted
                ):
                    return message.sid
        except Exception:  # Twilio unreachable, or refusing: in doubt, so never sent twice
            return None
        return False


def _before_sending(exc: BaseException) -> bool:
    """Did the request fail before it reached Twilio (no connection made), so that nothing was sent?"""
    import requests
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
    return isinstance(reason, NewConnectionError | ConnectTimeoutError)
