"""Hostile and broken input through the three handlers, generated with Hypothesis, counted.

Webhook cases: Twilio's documented payloads (WhatsApp text, media, location; SMS) with fields added
that name the engine's own keys (`Kind=flush`, `Media=…`, `ConversationId`, …) and random values,
signed or not; email JSON with fields of every JSON type; bodies that are not what their path says
(random text, a JSON array thousands of levels deep, bad base64); all in the event shapes AWS sends
(API Gateway REST, HTTP API, ALB), with a key of the event replaced by any JSON value. Queue cases:
batch records (envelopes of both schema versions, flush tokens, each key replaced or dropped, records
that are not objects or whose attributes have the wrong type) in batches of up to ten, and AI queue
records the same way. Counted:

  webhooks       requests run, and of them, those accepted and queued
  records        batch records and AI queue records run
  escaped        exceptions out of a handler (a Lambda invocation that fails as a whole)
  internal       answers INTERNAL_ERROR (the engine's own bug) or CONFIGURATION_ERROR
  off table      answers outside the table of stage 1's answers (docs/architecture.md) (status and error code, for the path's channel)
  not queued     webhooks accepted (a queue message id logged) without their message in the queue
  nowhere        batch records acknowledged whose message is not in its conversation (pending
                 included), not in a queue and not in a dead-letter queue

    .venv/bin/python bench/fuzz.py [--webhooks 10000] [--records 2000] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import conversation  # noqa: E402
from tests.payloads import (  # noqa: E402
    BASE,
    EMAIL_TOKEN,
    TOKEN,
    api_event,
    email_json,
    sid,
    sign,
    sms_text,
    whatsapp_location,
    whatsapp_media,
    whatsapp_text,
)

from replies_engine import clock  # noqa: E402
from replies_engine.bootstrap import get_runtime, reset_runtime  # noqa: E402
from replies_engine.handlers import batch_processor, reply_sender, webhook_handler  # noqa: E402

# The table of stage 1's answers (docs/architecture.md): the answers each error code may get, on a Twilio channel and on the others.
TWILIO_STATUS = {"INVALID_SIGNATURE": 403}  # every other code: 200 TwiML (transient ones raise)
JSON_STATUS = {
    "PARSING_ERROR": 400,
    "MISSING_REQUIRED_FIELD": 400,
    "INVALID_SIGNATURE": 403,
    "CONVERSATION_NOT_FOUND": 404,
    "PROJECT_INACTIVE": 403,
    "CHANNEL_NOT_ALLOWED": 403,
    "CONVERSATION_LOCKED": 409,
    "ROUTING_ERROR": 500,
    "QUEUE_ERROR": 500,
    "DB_QUERY_ERROR": 500,
}
OUR_FAULTS = {"INTERNAL_ERROR", "CONFIGURATION_ERROR"}
FAULTS = ("escaped", "internal", "off table", "not queued", "nowhere")
CONVERSATIONS = ("c1", "c2", "gone")  # c1, c2 exist; "gone" does not
QUEUES = ("whatsapp", "sms", "email", "handoff", "ai")

# --- webhook cases -------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Field names the engine's envelope uses, as a provider might send them; and some of Twilio's own.
posing = st.sampled_from(
    [
        "Kind",
        "kind",
        "Media",
        "media",
        "SchemaVersion",
        "schema_version",
        "ConversationId",
        "ChannelType",
        "ReceivedAt",
        "ProviderFields",
        "provider_fields",
        "MessageId",
        "MediaUrl0",
        "MediaContentType0",
        "NumMedia",
        "Latitude",
        "Longitude",
        "ButtonPayload",
        "OriginalRepliedMessageSid",
        "Forwarded",
        "ExternalUserId",
        "ProfileUsername",
        "OptOutType",
        "ReferralBody",
        "Body",
        "From",
        "To",
        "MessageSid",
    ]
)
texts = st.text(max_size=30) | st.sampled_from(["flush", "STOP", "help", "true", "", "[]", "{}", "1e9999"])


@st.composite
def twilio_request(draw: st.DrawFn) -> tuple[str, str, dict[str, str]]:
    """(channel, body, headers): a documented payload with fields added or changed, mostly signed."""
    channel, params = draw(
        st.sampled_from(["text", "media", "location", "sms"]).map(
            lambda kind: (
                "sms" if kind == "sms" else "whatsapp",
                {
                    "text": whatsapp_text,
                    "media": whatsapp_media,
                    "location": whatsapp_location,
                    "sms": sms_text,
                }[kind](),
            )
        )
    )
    params.update(draw(st.dictionaries(posing | st.text(min_size=1, max_size=12), texts, max_size=4)))
    params = {k: v for k, v in params.items() if "\x00" not in k}
    body = urlencode(params)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    signing = draw(st.sampled_from(["signed", "signed", "signed", "forged", "none"]))
    if signing != "none":
        headers["X-Twilio-Signature"] = sign(
            f"{BASE}/{channel}", params, TOKEN if signing == "signed" else "f" * 32
        )
    return channel, body, headers


@st.composite
def email_request(draw: st.DrawFn) -> tuple[str, str, dict[str, str]]:
    message: dict[str, Any] = email_json()
    for name in draw(
        st.lists(
            st.sampled_from(
                [
                    "from",
                    "to",
                    "subject",
                    "text",
                    "message_id",
                    "raw_text",
                    "attachments",
                    "kind",
                    "media",
                    "conversation_id",
                ]
            ),
            max_size=3,
        )
    ):
        message[name] = draw(json_values | texts)
    headers = {"Content-Type": "application/json"}
    if token := draw(st.sampled_from([EMAIL_TOKEN, EMAIL_TOKEN, "wrong", None])):
        headers["X-Webhook-Token"] = token
    return "email", json.dumps(message), headers


@st.composite
def broken_request(draw: st.DrawFn) -> tuple[str, str, dict[str, str]]:
    """A body that is not what its path says: text, deep JSON, JSON of another shape."""
    channel = draw(
        st.sampled_from(
            [
                "whatsapp",
                "sms",
                "email",
                "email/sendgrid",
                "email/mailgun",
                "email/postmark",
                "twilio/status",
                "nowhere",
            ]
        )
    )
    depth = draw(st.sampled_from([1, 50, 1_000, 10_000, 50_000]))
    body = draw(
        st.text(max_size=200)
        | st.just("[" * depth + "]" * depth)
        | st.just('{"a":' * depth + "1" + "}" * depth)
        | json_values.map(json.dumps)
    )
    content_type = draw(
        st.sampled_from(
            [
                "application/json",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "text/plain",
            ]
        )
    )
    return channel, body, {"Content-Type": content_type, "X-Webhook-Token": EMAIL_TOKEN}


EVENT_KEYS = [
    "headers",
    "multiValueHeaders",
    "requestContext",
    "body",
    "isBase64Encoded",
    "path",
    "rawPath",
    "httpMethod",
    "queryStringParameters",
    "multiValueQueryStringParameters",
    "rawQueryString",
]


@st.composite
def webhook_events(draw: st.DrawFn) -> dict[str, Any]:
    channel, body, headers = draw(twilio_request() | email_request() | broken_request())
    shape = draw(st.sampled_from(["rest", "http", "alb"]))
    event = api_event(f"/{channel}", body, headers, base64_body=draw(st.booleans()))
    if shape == "http":
        event = {
            "version": "2.0",
            "rawPath": f"/prod/{channel}",
            "rawQueryString": "",
            "headers": {k.lower(): v for k, v in event["headers"].items()},
            "requestContext": {
                "http": {"method": "POST", "path": f"/prod/{channel}"},
                "stage": "prod",
                "domainName": "hooks.example.com",
            },
            "body": event["body"],
            "isBase64Encoded": event["isBase64Encoded"],
        }
    elif shape == "alb":
        event["requestContext"] = {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:::targetgroup/x"}}
        event["multiValueHeaders"] = {k.lower(): [v] for k, v in event.pop("headers").items()}
    for key in draw(st.lists(st.sampled_from(EVENT_KEYS), max_size=2)):
        event[key] = draw(json_values)
    return event


# --- queue cases -----------------------------------------------------------------------------------------


def envelope(version: int, conversation_id: str, channel: str = "whatsapp") -> dict[str, Any]:
    message = {
        "channel_type": channel,
        "from": "whatsapp:+4915112345678",
        "to": "whatsapp:+14155238886",
        "body": "fuzz",
        "message_sid": sid(),
        "received_at": clock.iso(),
    }
    if version == 1:  # the provider's fields beside the engine's keys; a `kind` among them (Kind=flush)
        return {**message, "conversation_id": conversation_id, "kind": "flush", "wa_id": "4915112345678"}
    return {
        "schema_version": 2,
        "kind": "message",
        "conversation_id": conversation_id,
        **message,
        "provider_fields": {"wa_id": "4915112345678"},
    }


@st.composite
def batch_records(draw: st.DrawFn) -> dict[str, Any] | Any:
    conversation_id = draw(st.sampled_from(CONVERSATIONS))
    kind = draw(st.sampled_from(["v2", "v1", "flush", "other"]))
    if kind == "flush":
        body: Any = {
            "schema_version": 2,
            "kind": "flush",
            "conversation_id": conversation_id,
            "channel_type": "whatsapp",
        }
    else:
        body = envelope(1 if kind == "v1" else 2, conversation_id)
    for key in draw(
        st.lists(st.sampled_from([*body, "media", "attachments", "location", "schema_version"]), max_size=2)
    ):
        if draw(st.booleans()):
            body.pop(key, None)
        else:
            body[key] = draw(json_values | texts)
    record: Any = {
        "messageId": sid("rec-"),
        "receiptHandle": sid("rh-"),
        "body": json.dumps(body) if kind != "other" else draw(st.text(max_size=50)),
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {"RetryAttempt": {"stringValue": "0", "dataType": "Number"}},
        "eventSource": "aws:sqs",
    }
    for key in draw(
        st.lists(st.sampled_from(["messageAttributes", "attributes", "body", "messageId"]), max_size=1)
    ):
        record[key] = draw(json_values)
    return record if draw(st.integers(0, 19)) else draw(json_values)


@st.composite
def ai_records(draw: st.DrawFn) -> Any:
    context: dict[str, Any] = {
        "conversation_id": draw(st.sampled_from(CONVERSATIONS)),
        "batch_id": sid("batch-"),
        "channel_type": "whatsapp",
        "messages": [{"message_id": sid(), "role": "user", "content": "fuzz", "timestamp": clock.iso()}],
        "conversation": {},
        "history": [],
        "reply_address": {"from": "whatsapp:+14155238886", "to": "whatsapp:+4915112345678"},
    }
    for key in draw(st.lists(st.sampled_from([*context, "regenerations"]), max_size=2)):
        context[key] = draw(json_values)
    record = {
        "messageId": sid("rec-"),
        "receiptHandle": sid("rh-"),
        "body": json.dumps(context),
        "attributes": {
            "ApproximateReceiveCount": draw(st.sampled_from(["1", "x", 3, float("inf"), 10**100]))
        },
    }
    return record if draw(st.integers(0, 19)) else draw(json_values)


# --- the harness -----------------------------------------------------------------------------------------


class Refusals(logging.Handler):
    """Stage 1's own account of each request: its error code, or the queue message id it accepted."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[tuple[str | None, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() in ("message refused", "message accepted"):
            self.seen.append((getattr(record, "error_code", None), getattr(record, "queue_message_id", None)))


class Fuzz:
    """Runs cases against the engine of the environment and counts. `depth`: how many messages the
    queues hold; `bodies`: every body in the queues and their DLQs. `strict`: the first bad case raises
    AssertionError, so that Hypothesis shrinks it (the tests); else it is counted."""

    def __init__(
        self, depth: Callable[[], int], bodies: Callable[[], list[Any]], strict: bool = False
    ) -> None:
        self.depth = depth
        self.bodies = bodies
        self.strict = strict
        self.counts: Counter = Counter()
        self.acknowledged: dict[str, str] = {}  # message id → its conversation
        self.refusals = Refusals()
        logging.getLogger("replies_engine.webhook.pipeline").addHandler(self.refusals)

    def close(self) -> None:
        logging.getLogger("replies_engine.webhook.pipeline").removeHandler(self.refusals)

    def _bad(self, kind: str, detail: str) -> None:
        self.counts[kind] += 1
        if self.strict:
            raise AssertionError(f"{kind}: {detail}")

    def webhook(self, event: dict[str, Any]) -> None:
        self.counts["webhooks"] += 1
        before = self.depth()
        self.refusals.seen.clear()
        try:
            answer = webhook_handler(event, None)
        except Exception as exc:
            return self._bad("escaped", f"{type(exc).__name__}: {exc} for {str(event)[:300]}")
        codes = [code for code, _ in self.refusals.seen if code]
        queued = [message_id for _, message_id in self.refusals.seen if message_id]
        if set(codes) & OUR_FAULTS:
            return self._bad("internal", f"{codes} for {str(event)[:300]}")
        if not _in_table(answer, codes, _path(event)):
            return self._bad("off table", f"{answer} for {codes}")
        self.counts["accepted"] += len(queued)
        if (added := self.depth() - before) != len(queued):
            self._bad("not queued", f"{len(queued)} accepted, {added} queued")

    def batch(self, records: list[Any]) -> None:
        self.counts["batch records"] += len(records)
        try:
            result = batch_processor({"Records": records}, None)
        except Exception as exc:
            return self._bad("escaped", f"{type(exc).__name__}: {exc}")
        failed = {item["itemIdentifier"] for item in result["batchItemFailures"]}
        for record in records:
            message = _message(record)
            if message and record["messageId"] not in failed:
                self.acknowledged[message[0]] = message[1]

    def replies(self, records: list[Any]) -> None:
        self.counts["AI records"] += len(records)
        try:
            reply_sender({"Records": records}, None)
        except Exception as exc:
            self._bad("escaped", f"{type(exc).__name__}: {exc}")

    def verdict(self) -> Counter:
        """Acknowledged batch records: each message in its conversation, pending, or a queue."""
        store = get_runtime().store
        found: set[str] = set()
        for conversation_id in CONVERSATIONS:
            record = store.get(conversation_id) or {}
            found.update(m.get("message_id") for m in store.messages(conversation_id) if record)
            found.update(
                m.get("message_id") for m in record.get("pending_messages", []) if isinstance(m, dict)
            )
        for body in self.bodies():
            found.update(_ids(body))
        nowhere = [m for m in self.acknowledged if m not in found]
        self.counts["nowhere"] += len(nowhere)
        if nowhere and self.strict:
            raise AssertionError(f"acknowledged but nowhere: {nowhere}")
        return self.counts


def _path(event: Any) -> str:
    """The path the request names (REST's `path`, payload 2.0's `rawPath`, else the request context's)."""
    if not isinstance(event, dict):
        return ""
    context = event.get("requestContext") if isinstance(event.get("requestContext"), dict) else {}
    path = event.get("path") or event.get("rawPath") or context.get("path")
    return path if isinstance(path, str) else ""


def _in_table(answer: Any, codes: list[str], path: str) -> bool:
    if not (isinstance(answer, dict) and isinstance(answer.get("statusCode"), int)):
        return False
    status, twilio = answer["statusCode"], path.rstrip("/").endswith(("/whatsapp", "/sms"))
    if not codes:  # accepted
        return status == 200
    (code,) = codes
    return status == (TWILIO_STATUS.get(code, 200) if twilio else JSON_STATUS.get(code))


def _message(record: Any) -> tuple[str, str] | None:
    """(message id, conversation) of a batch record that carries a person's message, as stage 2 reads it."""
    from replies_engine import envelope
    from replies_engine.conversation import message_key

    try:
        read = envelope.read(envelope.SqsRecord.read(record).body)
    except envelope.Unreadable:
        return None
    return (message_key(read), read["conversation_id"]) if read["kind"] == "message" else None


def _ids(body: str | dict[str, Any]) -> set[str]:
    try:
        value = json.loads(body) if isinstance(body, str) else body
    except ValueError:
        return set()
    found = set()
    for item in [value, *(value.get("messages", []) if isinstance(value, dict) else [])]:
        if isinstance(item, dict):
            found.update(str(item[k]) for k in ("message_sid", "message_id") if item.get(k))
    return found


def seed(put: Any) -> None:
    put(conversation("c1"))
    put(conversation("c2", gsi_recipient_tel="+4915100000002", gsi_recipient_email="max@example.org"))


def cases(fuzz: Fuzz, webhooks: int, records: int, derandomize: bool = False) -> None:
    """Run `webhooks` generated requests, then at least `records` batch records (in batches of up to
    ten), each batch with up to ten AI queue records beside."""

    def run(examples: int) -> settings:
        return settings(
            max_examples=examples,
            database=None,
            deadline=None,
            derandomize=derandomize,
            suppress_health_check=list(HealthCheck),
        )

    @run(webhooks)
    @given(webhook_events())
    def webhook(event: dict[str, Any]) -> None:
        fuzz.webhook(event)

    @run(max(1, records // 5))  # lists of 1 to 10: about 5 records an example
    @given(
        st.lists(batch_records(), min_size=1, max_size=10), st.lists(ai_records(), min_size=1, max_size=10)
    )
    def queues(batch: list[Any], ai: list[Any]) -> None:
        fuzz.batch(batch)
        fuzz.replies(ai)

    webhook()
    while fuzz.counts["batch records"] < records:
        queues()


ENV = {
    "LOG_LEVEL": "INFO",  # stage 1 logs what it accepted; counted, not printed
    "TWILIO_AUTH_TOKEN": TOKEN,
    "PUBLIC_BASE_URL": BASE,
    "EMAIL_WEBHOOK_TOKEN": EMAIL_TOKEN,
    "MAILGUN_SIGNING_KEY": "mailgun-signing-key",  # every door configured: a CONFIGURATION_ERROR is a bug
    "VERIFY_SIGNATURES": "enforce",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--webhooks", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=2_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in [v for v in os.environ if v.startswith(("AWS_", "REPLIES_", "TWILIO_", "EMAIL_"))]:
            del os.environ[name]
        os.environ.update(ENV, REPLIES_SQLITE_PATH=f"{tmp}/fuzz.db")
        reset_runtime()
        seed(get_runtime().store.put)
        for handler in logging.getLogger("replies_engine").handlers:
            handler.setLevel(logging.CRITICAL)
        queue = get_runtime().queue
        every = [*QUEUES, *(f"{q}-dlq" for q in QUEUES)]
        fuzz = Fuzz(
            lambda: sum(sum(c.values()) for c in queue.stats().values()),
            lambda: [m.body for name in every for m in queue.peek(name)],
        )
        started = time.perf_counter()
        cases(fuzz, args.webhooks, args.records)
        counts = fuzz.verdict()
        fuzz.close()
        elapsed = time.perf_counter() - started
    columns = ("webhooks", "accepted", "batch records", "AI records", *FAULTS)
    print(" | ".join(columns) + " | seconds")
    print(" | ".join(str(counts[c]) for c in columns) + f" | {elapsed:.0f}")
    sys.exit(
        1 if any(counts[k] for k in ("escaped", "internal", "off table", "not queued", "nowhere")) else 0
    )


if __name__ == "__main__":
    main()
