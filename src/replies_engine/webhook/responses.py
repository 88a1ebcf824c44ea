"""Stage 1, step 6: error code → HTTP answer (docs/design.md §4.4).

`response_builder` suggests the status and JSON body; `final_response` applies the channel's rules:
Twilio gets 200 TwiML for everything it must not retry, and a raised error (API Gateway answers 5xx,
Twilio retries) only for transient faults.
"""

from __future__ import annotations

import json

from ..channels import Channel

ERROR_STATUS: dict[str, int] = {
    "PARSING_ERROR": 400,
    "INVALID_SIGNATURE": 403,
    "MISSING_REQUIRED_FIELD": 400,
    "CONFIGURATION_ERROR": 500,
    "DB_TRANSIENT_ERROR": 503,
    "DB_QUERY_ERROR": 500,
    "INTERNAL_ERROR": 500,
    "CONVERSATION_NOT_FOUND": 404,
    "PROJECT_INACTIVE": 403,
    "CHANNEL_NOT_ALLOWED": 403,
    "CONVERSATION_LOCKED": 409,
    "ROUTING_ERROR": 500,
    "QUEUE_ERROR": 500,
    "QUEUE_TRANSIENT_ERROR": 503,
}
TRANSIENT_ERROR_CODES = frozenset({"DB_TRANSIENT_ERROR", "QUEUE_TRANSIENT_ERROR"})

# What the body says where the reason comes from what the engine holds (records, addresses, backend
# errors, the URL and key a signature was checked with): it stays in the log, so that no caller
# learns who has a conversation with whom. The other codes' reasons describe the request itself or
# the engine's settings, and help whoever sent it.
PUBLIC_MESSAGE: dict[str, str] = {
    "INVALID_SIGNATURE": "invalid signature",  # which URL or token was expected is for the log only
    "CONVERSATION_NOT_FOUND": "no active conversation for this sender and recipient",
    "PROJECT_INACTIVE": "the conversation's project is not active",
    "CHANNEL_NOT_ALLOWED": "the conversation does not allow this channel",
    "CONVERSATION_LOCKED": "a reply to this conversation is being prepared",
    "DB_TRANSIENT_ERROR": "the database is busy: retry later",
    "DB_QUERY_ERROR": "the database refused the request",
    "INTERNAL_ERROR": "unexpected error",
    "ROUTING_ERROR": "no queue for this message",
    "QUEUE_ERROR": "the message could not be queued",
    "QUEUE_TRANSIENT_ERROR": "the queue is busy: retry later",
}

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'  # docs/design.md §4.4, to the letter


class TransientWebhookError(RuntimeError):
    """Raised to make API Gateway answer 5xx, so that Twilio retries the webhook."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(f"{error_code}: {message}")
        self.error_code = error_code


def response_builder(error_code: str, message: str) -> dict:
    """The suggested API Gateway response for an error code: its status and a JSON body (the reason
    itself only where it names nothing the engine holds)."""
    public = PUBLIC_MESSAGE.get(error_code, message)
    return json_response(ERROR_STATUS.get(error_code, 500), {"error_code": error_code, "message": public})


ERROR_HEADER = "X-Replies-Error-Code"  # on a refusal answered 200 TwiML: the code, for whoever debugs


def twiml_response(text: str | None = None, error_code: str | None = None) -> dict:
    """200 TwiML: empty, or with one `<Message>` back to the sender; a refusal names its code in
    `ERROR_HEADER` (Twilio ignores it; the code names no one)."""
    body = EMPTY_TWIML
    if text:
        from twilio.twiml.messaging_response import MessagingResponse  # only here: it costs the cold start

        reply = MessagingResponse()
        reply.message(text)
        body = str(reply)
    headers = {"Content-Type": "text/xml", **({ERROR_HEADER: error_code} if error_code else {})}
    return {"statusCode": 200, "headers": headers, "body": body}


def success_response(channel: Channel | None, message_id: str, reply_text: str | None = None) -> dict:
    if channel is not None and channel.provider.answers_with_twiml:
        return twiml_response(reply_text)
    return json_response(200, {"status": "queued", "message_id": message_id})


def final_response(channel: Channel | None, error_code: str, message: str, locked_reply_text: str) -> dict:
    """The answer to the provider for an error, by the channel's rules."""
    suggested = response_builder(error_code, message)
    if channel is None or not channel.provider.answers_with_twiml or error_code == "INVALID_SIGNATURE":
        return suggested  # a forged request earns no TwiML
    if error_code in TRANSIENT_ERROR_CODES:
        raise TransientWebhookError(error_code, message)
    if error_code == "CONVERSATION_LOCKED":
        return twiml_response(locked_reply_text, error_code)
    return twiml_response(error_code=error_code)


def for_alb(response: dict) -> dict:
    """An Application Load Balancer wants the status's description and the body's encoding too."""
    from http import HTTPStatus

    status = response["statusCode"]
    return {
        **response,
        "statusDescription": f"{status} {HTTPStatus(status).phrase}",
        "isBase64Encoded": False,
    }


def json_response(status: int, payload: dict) -> dict:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(payload, ensure_ascii=False),
    }
