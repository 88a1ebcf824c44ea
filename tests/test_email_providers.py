"""Inbound email as real providers send it, through `webhook_handler` on both backends:
Postmark's inbound webhook and a Mailgun route's forward, each with its authenticity check, mapped onto
the same `context_object`; quoted history stripped from what the AI sees, the raw text kept."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import time
from urllib.parse import urlencode

import pytest

from replies_engine.webhook.email_providers import strip_quoted

from .conftest import conversation
from .payloads import EMAIL_TOKEN, api_event, email_event, email_json

SIGNING_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"

# Postmark developer docs, "Inbound webhook", the example payload (names and addresses ours)
POSTMARK = {
    "FromName": "Zoë Example",
    "MessageStream": "inbound",
    "From": "zoe@example.org",
    "FromFull": {"Email": "zoe@example.org", "Name": "Zoë Example", "MailboxHash": ""},
    "To": "support@company.example",
    "ToFull": [{"Email": "support@company.example", "Name": "", "MailboxHash": ""}],
    "Cc": "",
    "CcFull": [],
    "Bcc": "",
    "BccFull": [],
    "OriginalRecipient": "support@company.example",
    "Subject": "Re: your appointment",
    "MessageID": "73e6d360-66eb-11e1-8e72-a8904824019b",
    "ReplyTo": "",
    "MailboxHash": "",
    "Date": "Fri, 1 Aug 2014 16:45:32 -04:00",
    "TextBody": "Friday works for me.\n\nOn Thu, 31 Jul 2014, Support <support@company.example> wrote:\n> Can we move it?",
    "HtmlBody": "<html><body><p>Friday works for me.</p></body></html>",
    "StrippedTextReply": "Friday works for me.",
    "Tag": "",
    "Headers": [
        {"Name": "X-Spam-Status", "Value": "No"},
        {"Name": "Message-ID", "Value": "<CAE6aW=ZcWQGC0J8yRq3U9@mail.example.org>"},
    ],
    "Attachments": [
        {
            "Name": "myimage.png",
            "Content": "[BASE64-ENCODED CONTENT]",
            "ContentType": "image/png",
            "ContentLength": 4096,
        }
    ],
}

# Mailgun docs, "Receiving, Forwarding and Storing Messages", the fields a route's forward() POSTs
MAILGUN = {
    "recipient": "support@company.example",
    "sender": "zoe@example.org",
    "from": "Zoë Example <zoe@example.org>",
    "subject": "Re: your appointment",
    "body-plain": "Friday works for me.\n\n-- \nZoë\n\nOn Thu, Support wrote:\n> Can we move it?",
    "stripped-text": "Friday works for me.",
    "stripped-signature": "Zoë",
    "body-html": "<p>Friday works for me.</p>",
    "attachment-count": "0",
    "Message-Id": "<CAE6aW=mailgun1@mail.example.org>",
    "Subject": "Re: your appointment",
    "message-headers": json.dumps([["Message-Id", "<CAE6aW=mailgun1@mail.example.org>"]]),
}


def mailgun_form(key: str = SIGNING_KEY, age: float = 0, **overrides: str) -> dict[str, str]:
    timestamp, token = str(int(time.time() - age)), "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0"
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {**MAILGUN, "timestamp": timestamp, "token": token, "signature": signature, **overrides}


def provider_event(provider: str, body: str, content_type: str, auth: str | None = EMAIL_TOKEN) -> dict:
    headers = {"Content-Type": content_type}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"postmark:{auth}".encode()).decode()
    return api_event(f"/email/{provider}", body, headers)


@pytest.fixture
def mail(engine):
    engine.env(MAILGUN_SIGNING_KEY=SIGNING_KEY)
    return engine


def queued(engine) -> list[dict]:
    return [m["body"] for m in engine.queued("email")]


def test_postmark_is_mapped_and_the_ai_sees_the_stripped_reply(mail):
    answer = mail.handle(provider_event("postmark", json.dumps(POSTMARK), "application/json"))

    assert answer["statusCode"] == 200, answer["body"]
    [context] = queued(mail)
    assert context["body"] == "Friday works for me." and context["raw_text"] == POSTMARK["TextBody"]
    assert context["message_id"] == "<CAE6aW=ZcWQGC0J8yRq3U9@mail.example.org>"  # the header, for threading
    assert context["attachments"] == [{"name": "myimage.png", "content_type": "image/png", "size": 4096}]
    assert context["conversation_id"] == "c1" and context["subject"] == "Re: your appointment"


def test_postmark_without_the_basic_auth_password_is_refused(mail):
    for auth in (None, "wrong"):
        answer = mail.handle(provider_event("postmark", json.dumps(POSTMARK), "application/json", auth=auth))
        assert answer["statusCode"] == 403

    assert queued(mail) == []


def test_a_signed_mailgun_forward_is_mapped(mail):
    answer = mail.handle(
        provider_event("mailgun", urlencode(mailgun_form()), "application/x-www-form-urlencoded", auth=None)
    )

    assert answer["statusCode"] == 200, answer["body"]
    [context] = queued(mail)
    assert context["body"] == "Friday works for me." and context["raw_text"] == MAILGUN["body-plain"]
    assert (
        context["message_id"] == "<CAE6aW=mailgun1@mail.example.org>" and context["conversation_id"] == "c1"
    )


@pytest.mark.parametrize(
    "form",
    [mailgun_form(key="key-forged"), mailgun_form(age=600), {k: v for k, v in MAILGUN.items()}],
    ids=["forged", "stale", "unsigned"],
)
def test_a_forged_stale_or_unsigned_mailgun_forward_is_refused(mail, form):
    answer = mail.handle(
        provider_event("mailgun", urlencode(form), "application/x-www-form-urlencoded", auth=None)
    )

    assert answer["statusCode"] == 403 and "INVALID_SIGNATURE" in answer["body"]
    assert queued(mail) == []


def test_mailgun_without_a_signing_key_is_a_configuration_error(engine):
    answer = engine.handle(
        provider_event("mailgun", urlencode(mailgun_form()), "application/x-www-form-urlencoded", auth=None)
    )

    assert answer["statusCode"] == 500 and "MAILGUN_SIGNING_KEY" in answer["body"]
    assert queued(engine) == []


@pytest.mark.parametrize(
    ("provider", "body"), [("postmark", "{not json"), ("postmark", "[1, 2]"), ("mailgun", "a=%zz&&")]
)
def test_a_provider_body_that_cannot_be_read_is_a_400(mail, provider, body):
    answer = mail.handle(provider_event(provider, body, "application/json"))

    assert answer["statusCode"] == 400 and "PARSING_ERROR" in answer["body"]


def test_the_plain_json_shape_stays_and_its_quoted_history_is_stripped(mail):
    text = "Yes, Friday.\n\nOn Thu, 31 Jul 2014 Support wrote:\n> Can we move it?\n"

    assert mail.handle(email_event(email_json(text)))["statusCode"] == 200

    [context] = queued(mail)
    assert context["body"] == "Yes, Friday." and context["raw_text"] == text


@pytest.mark.parametrize(
    ("text", "own"),
    [
        ("Thanks!\n\nOn Tue, 2 Dec 2026 at 10:00, Support <s@x.example> wrote:\n> hi", "Thanks!"),
        ("Danke!\n\nAm 2. Dez. 2026 um 10:00 schrieb Support <s@x.example>:\n> hallo", "Danke!"),
        ("See below.\n-----Original Message-----\nFrom: Support", "See below."),
        ("Fine.\n-- \nZoë Example\nCEO", "Fine."),
        ("> only a quote", "> only a quote"),  # nothing of its own: kept whole rather than emptied
    ],
)
def test_strip_quoted_keeps_the_replys_own_text(text, own):
    assert strip_quoted(text) == own


def test_a_stage_prefixed_provider_path_is_found(mail):
    event = provider_event("postmark", json.dumps(copy.deepcopy(POSTMARK)), "application/json")
    event["requestContext"]["path"] = "/prod/email/postmark"

    assert mail.handle(event)["statusCode"] == 200


# --- outbound: the reply by SMTP, in the person's thread ----------------------------------------------


def test_an_email_reply_goes_out_by_smtp_in_the_persons_thread(mail, smtp_server):
    from email import message_from_bytes, policy

    controller, received = smtp_server
    mail.env(
        SMTP_URL=f"smtp://127.0.0.1:{controller.port}", BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0"
    )
    inbound = email_json("Can we talk tomorrow?")

    assert mail.handle(email_event(inbound))["statusCode"] == 200
    mail.deliver("email")
    mail.deliver("ai")

    [envelope] = received.messages
    sent = message_from_bytes(envelope.content, policy=policy.default)
    assert envelope.rcpt_tos == ["Zoe@Example.org"] and envelope.mail_from == "support@company.example"
    assert sent["In-Reply-To"] == sent["References"] == inbound["message_id"]
    assert sent["Subject"] == "Re: your appointment"  # theirs already had its "Re:"
    assert sent.get_content().strip() == "Thanks, we received your 1 message."
    [reply] = [m for m in mail.get()["messages"] if m["role"] == "assistant"][1:]
    assert reply["message_id"] == sent["Message-ID"] and mail.outbox() == []


def test_an_smtp_server_that_is_down_keeps_the_reply_for_a_retry(mail):
    from replies_engine.handlers import reply_sender
    from replies_engine.local.workers import sqs_event

    from .processes import free_port

    mail.env(SMTP_URL=f"smtp://127.0.0.1:{free_port()}", BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0")
    assert mail.handle(email_event(email_json("hello")))["statusCode"] == 200
    mail.deliver("email")
    [ai] = mail.runtime.queue.receive("ai")

    assert reply_sender(sqs_event("ai", [ai]), None)["batchItemFailures"] != []  # refused: retried

    assert mail.get()["conversation_status"] == "processing_reply"


def test_a_bad_smtp_url_is_a_configuration_error(engine):
    from replies_engine.config import ConfigurationError

    engine.env(SMTP_URL="http://mail.example")

    with pytest.raises(ConfigurationError, match="SMTP_URL"):
        engine.runtime.senders  # noqa: B018  (serve makes them at start)


# --- SendGrid Inbound Parse (multipart/form-data) ------------------------------------------------------

BOUNDARY = "xYzZY"


def sendgrid_body(fields: dict[str, str], files: tuple = ()) -> bytes:
    """A multipart/form-data body as SendGrid's Inbound Parse posts it (SendGrid docs, "Inbound Parse
    Webhook", the default, non-raw payload: one part per field, attachments as file parts)."""
    chunks = []
    for name, value in fields.items():
        chunks.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, filename, content_type, content in files:
        chunks.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    return b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()


SENDGRID = {
    "headers": "Received: by mx0047p1mdw1.sendgrid.net\nMessage-ID: <CAE6aW=sendgrid1@mail.example.org>\n"
    "From: Zoë Example <zoe@example.org>\nTo: support@company.example\nSubject: Re: your appointment\n",
    "dkim": "{@example.org : pass}",
    "to": "support@company.example",
    "from": "Zoë Example <zoe@example.org>",
    "text": "Friday works.\n\nOn Thu, Support <support@company.example> wrote:\n> Can we move it?\n",
    "html": "<p>Friday works.</p>",
    "sender_ip": "209.85.223.176",
    "envelope": '{"to":["support@company.example"],"from":"zoe@example.org"}',
    "attachments": "1",
    "subject": "Re: your appointment",
    "charsets": '{"to":"UTF-8","html":"UTF-8","subject":"UTF-8","from":"UTF-8","text":"UTF-8"}',
    "SPF": "pass",
}


def sendgrid_event(
    body: bytes, content_type: str = f"multipart/form-data; boundary={BOUNDARY}", auth=EMAIL_TOKEN
):
    event = provider_event("sendgrid", base64.b64encode(body).decode(), content_type, auth=auth)
    event["isBase64Encoded"] = True  # API Gateway passes multipart bodies as binary
    return event


def test_sendgrid_inbound_parse_is_mapped_with_its_attachments(mail):
    pdf = b"%PDF-1.4 \x00\xff binary"
    body = sendgrid_body(SENDGRID, files=[("attachment1", "plan.pdf", "application/pdf", pdf)])

    answer = mail.handle(sendgrid_event(body))

    assert answer["statusCode"] == 200, answer["body"]
    [context] = queued(mail)
    assert context["body"] == "Friday works." and context["raw_text"] == SENDGRID["text"]
    assert context["message_id"] == "<CAE6aW=sendgrid1@mail.example.org>"
    assert context["attachments"] == [
        {"name": "plan.pdf", "content_type": "application/pdf", "size": len(pdf)}
    ]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", sendgrid_body(SENDGRID)),  # no boundary
        ("multipart/form-data; boundary=other", sendgrid_body(SENDGRID)),  # not this body's
        ("application/json", b"{}"),
    ],
    ids=["no-boundary", "wrong-boundary", "not-multipart"],
)
def test_a_sendgrid_body_that_is_not_its_multipart_is_a_400(mail, content_type, body):
    answer = mail.handle(sendgrid_event(body, content_type))

    assert answer["statusCode"] == 400 and "PARSING_ERROR" in answer["body"] and queued(mail) == []


def test_sendgrid_without_the_basic_auth_password_is_refused(mail):
    assert mail.handle(sendgrid_event(sendgrid_body(SENDGRID), auth="wrong"))["statusCode"] == 403
    assert queued(mail) == []


def test_a_2_mb_pdf_is_accepted_and_only_its_description_is_queued(mail):
    pdf = b"%PDF-1.4 " + b"\0" * 2_000_000  # a signed form, a photo from a phone
    body = sendgrid_body(SENDGRID, files=[("attachment1", "form.pdf", "application/pdf", pdf)])

    answer = mail.handle(sendgrid_event(body))

    assert answer["statusCode"] == 200, answer["body"]
    [context] = queued(mail)
    assert context["attachments"] == [
        {"name": "form.pdf", "content_type": "application/pdf", "size": len(pdf)}
    ]
    assert len(json.dumps(context)) < 10_000  # the bytes stay with the provider


def test_a_mail_over_the_front_doors_10_mb_is_refused_with_a_clear_error(mail):
    body = sendgrid_body(
        SENDGRID, files=[("attachment1", "big.bin", "application/octet-stream", b"\0" * 11_000_000)]
    )

    answer = mail.handle(sendgrid_event(body))

    assert answer["statusCode"] == 400 and "bytes, more than the 10485760 allowed" in answer["body"]
    assert queued(mail) == []


# --- outbound on AWS: Amazon SES (moto's server, the same process) --------------------------------------


def ses_sent(engine) -> list[str]:
    """The raw messages moto's SES accepted in the stack's region."""
    from moto.backends import get_backend

    from .aws import REGION

    return [m.raw_data for m in get_backend("ses")["123456789012"][REGION].sent_messages]


@pytest.mark.aws_only
def test_an_email_reply_goes_out_through_ses_in_the_persons_thread(mail):
    import boto3

    mail.env(EMAIL_SENDER="ses", BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0")
    ses = boto3.client(
        "sesv2",
        endpoint_url=mail.stack.endpoint,
        region_name=mail.stack.dynamodb.meta.region_name,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    ses.create_email_identity(EmailIdentity="company.example")  # the company's domain, verified
    before = len(ses_sent(mail))
    inbound = email_json("Can we talk tomorrow?")

    assert mail.handle(email_event(inbound))["statusCode"] == 200
    mail.deliver("email")
    mail.deliver("ai")

    [raw] = ses_sent(mail)[before:]
    assert f"In-Reply-To: {inbound['message_id']}" in raw and "Subject: Re: your appointment" in raw
    [reply] = [m for m in mail.get()["messages"] if m["role"] == "assistant"][1:]
    assert reply["delivery_status"] == "queued" and mail.outbox() == []


@pytest.mark.aws_only
def test_ses_refusing_an_unverified_sender_is_reply_failed(mail):
    from . import iam

    # the role may send from it (SesIdentities names it), SES has not verified it
    iam.active().parameters = {"SesIdentities": "company.example,unverified.example"}
    mail.env(EMAIL_SENDER="ses", BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0")
    unverified = email_json("hello", to="sales@unverified.example")
    mail.put(conversation(gsi_company_email="sales@unverified.example"))

    assert mail.handle(email_event(unverified))["statusCode"] == 200
    mail.deliver("email")
    mail.deliver("ai")

    record = mail.get()
    assert record["conversation_status"] == "reply_failed" and record["last_error_code"] == "MessageRejected"


def test_a_mailgun_forward_with_an_attachment_comes_as_multipart(mail):
    form = {**mailgun_form(), "attachment-count": "1"}
    body = sendgrid_body(form, files=[("attachment-1", "plan.pdf", "application/pdf", b"%PDF")])
    event = provider_event(
        "mailgun", base64.b64encode(body).decode(), f"multipart/form-data; boundary={BOUNDARY}", auth=None
    )
    event["isBase64Encoded"] = True

    answer = mail.handle(event)

    assert answer["statusCode"] == 200, answer["body"]
    [context] = queued(mail)
    assert context["body"] == "Friday works for me." and context["attachments"][0]["name"] == "plan.pdf"


# --- every door needs its credential -------------------------------------------------------------------

UNAUTHENTICATED = {
    "/email": lambda: email_event(email_json(), token=None),
    "/email/sendgrid": lambda: sendgrid_event(sendgrid_body(SENDGRID), auth=None),
    "/email/postmark": lambda: provider_event(
        "postmark", json.dumps(POSTMARK), "application/json", auth=None
    ),
    "/email/mailgun": lambda: provider_event(
        "mailgun", urlencode(MAILGUN), "application/x-www-form-urlencoded", auth=None
    ),
}


@pytest.mark.parametrize("route", sorted(UNAUTHENTICATED))
def test_with_no_credential_configured_every_email_route_refuses_and_queues_nothing(engine, route):
    engine.env(EMAIL_WEBHOOK_TOKEN="", MAILGUN_SIGNING_KEY="")

    answer = engine.handle(UNAUTHENTICATED[route]())

    body = json.loads(answer["body"])
    if engine.backend == "sqlite" and route != "/email/mailgun":
        # the embedded engine made its own token (serve prints it): the request does not carry it
        assert (answer["statusCode"], body["error_code"]) == (403, "INVALID_SIGNATURE")
    else:
        assert (answer["statusCode"], body["error_code"]) == (500, "CONFIGURATION_ERROR")
        assert "EMAIL_WEBHOOK_TOKEN" in body["message"] or "MAILGUN_SIGNING_KEY" in body["message"]
    assert engine.all_queued() == 0


@pytest.mark.sqlite_only
def test_the_embedded_engines_own_email_token_opens_the_door(engine):
    engine.env(EMAIL_WEBHOOK_TOKEN="")
    token = engine.runtime.secret("EMAIL_WEBHOOK_TOKEN")

    assert len(token) == 32 and token != EMAIL_TOKEN
    assert engine.handle(email_event(email_json(), token=token))["statusCode"] == 200
