"""Email as the providers really send it, on both backends: SendGrid's `charsets` honoured (and a wrong
one survived without silent replacement characters), its raw MIME mode, a mail without a Message-ID
kept once, and the reply from our own address to the right person, in the person's thread."""

from __future__ import annotations

import json
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from .conftest import conversation
from .payloads import email_event, email_json
from .test_email_providers import (
    BOUNDARY,
    POSTMARK,
    SENDGRID,
    provider_event,
    queued,
    sendgrid_event,
)

GRUSS = "Grüße aus Köln – 5 €"


def sendgrid_bytes(fields: dict[str, str | bytes]) -> bytes:
    """SendGrid's multipart body, each field's bytes as given (SendGrid sends each in its own charset)."""
    chunks = []
    for name, value in fields.items():
        raw = value if isinstance(value, bytes) else value.encode()
        chunks.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + raw + b"\r\n"
        )
    return b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()


@pytest.fixture
def mail(engine):
    engine.env(BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0")
    return engine


@pytest.mark.parametrize("charset", ["windows-1252", "iso-8859-15", "utf-8"])
def test_sendgrid_text_in_its_declared_charset_is_stored_as_written(mail, charset):
    text = GRUSS if charset != "iso-8859-15" else GRUSS.replace("–", "-")
    charsets = {"to": "UTF-8", "from": "UTF-8", "subject": "UTF-8", "text": charset}
    body = sendgrid_bytes({**SENDGRID, "text": text.encode(charset), "charsets": json.dumps(charsets)})

    assert mail.handle(sendgrid_event(body))["statusCode"] == 200

    [context] = queued(mail)
    assert context["body"] == text and "\ufffd" not in context["body"]


def test_a_wrong_declared_charset_is_decoded_with_a_fallback_and_logged(mail, caplog):
    charsets = {"to": "UTF-8", "from": "UTF-8", "subject": "UTF-8", "text": "UTF-8"}  # but it is not
    body = sendgrid_bytes(
        {**SENDGRID, "text": GRUSS.encode("windows-1252"), "charsets": json.dumps(charsets)}
    )

    assert mail.handle(sendgrid_event(body))["statusCode"] == 200

    [context] = queued(mail)
    assert context["body"] == GRUSS
    [warned] = [r for r in caplog.records if "decoded with a fallback" in r.getMessage()]
    assert (warned.declared, warned.decoded_as) == ("UTF-8", "windows-1252")


def raw_mail(**headers: str) -> bytes:
    """A whole mail as SendGrid's raw mode posts it in `email`: text in ISO-8859-1, quoted-printable,
    an HTML alternative and a PDF attachment."""
    mail = EmailMessage()
    for name, value in {
        "From": "Zoë Example <zoe@example.org>",
        "To": "Company Support <support@company.example>",
        "Subject": "Re: your appointment",
        "Message-ID": "<raw-1@mail.example.org>",
        "References": "<first@company.example> <second@mail.example.org>",
        "In-Reply-To": "<second@mail.example.org>",
        **headers,
    }.items():
        mail[name] = value
    mail.set_content(
        "Grüße! Friday works.\n\nOn Thu, Support wrote:\n> Can we move it?\n",
        charset="iso-8859-1",
        cte="quoted-printable",
    )
    mail.add_alternative("<p>Grüße! Friday works.</p>", subtype="html")
    mail.add_attachment(b"%PDF-1.4 plan", maintype="application", subtype="pdf", filename="plan.pdf")
    return mail.as_bytes()


def test_sendgrids_raw_mode_is_read_with_the_email_package(mail):
    fields = {k: v for k, v in SENDGRID.items() if k not in ("headers", "text", "html", "attachments")}
    body = sendgrid_bytes({**fields, "email": raw_mail()})

    assert mail.handle(sendgrid_event(body))["statusCode"] == 200

    [context] = queued(mail)
    assert context["body"] == "Grüße! Friday works." and context["message_id"] == "<raw-1@mail.example.org>"
    assert context["references"] == ["<first@company.example>", "<second@mail.example.org>"]
    assert context["attachments"] == [{"name": "plan.pdf", "content_type": "application/pdf", "size": 13}]


def test_a_raw_body_that_is_not_a_mail_is_a_clear_400(mail):
    fields = {k: v for k, v in SENDGRID.items() if k not in ("headers", "text")}
    answer = mail.handle(sendgrid_event(sendgrid_bytes({**fields, "email": b"just some words"})))

    assert answer["statusCode"] == 400 and "not an email" in answer["body"]
    assert queued(mail) == []


def test_a_mail_without_a_message_id_is_kept_once_through_the_providers_retry(mail):
    headers = SENDGRID["headers"].replace("Message-ID: <CAE6aW=sendgrid1@mail.example.org>\n", "")
    body = sendgrid_bytes({**SENDGRID, "headers": headers})

    for _ in range(2):  # SendGrid posts it again
        assert mail.handle(sendgrid_event(body))["statusCode"] == 200
    first, again = (c["message_id"] for c in queued(mail))
    mail.deliver("email")

    assert first == again and first.startswith("synthetic-")
    users = [m for m in mail.get()["messages"] if m["role"] == "user"]
    assert [m["message_id"] for m in users] == [first] and "email_message_id" not in users[0]


def sent_by_smtp(mail, smtp_server, inbound_event) -> EmailMessage:
    controller, received = smtp_server
    mail.env(
        SMTP_URL=f"smtp://127.0.0.1:{controller.port}", BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0"
    )
    assert mail.handle(inbound_event)["statusCode"] == 200
    mail.deliver("email")
    mail.deliver("ai")
    [envelope] = received.messages
    return envelope, message_from_bytes(envelope.content, policy=policy.default)


def test_the_reply_goes_from_our_own_address_to_reply_to_and_in_the_thread(mail, smtp_server):
    inbound = email_json(
        "Can we talk tomorrow?",
        to='"Company Support" <support@company.example>, "Max Colleague" <max@zoe-employer.example>',
        reply_to="Zoë Private <zoe.private@example.org>",  # on her From's domain
        message_id="<m3@mail.example.org>",
    )
    envelope, sent = sent_by_smtp(mail, smtp_server, email_event(inbound))

    assert sent["From"] == "Company Support <support@company.example>"
    assert envelope.rcpt_tos == ["zoe.private@example.org"] and sent["Cc"] is None
    assert sent["In-Reply-To"] == "<m3@mail.example.org>" and sent["References"] == "<m3@mail.example.org>"
    assert sent["Message-ID"].endswith("@company.example>")


def test_with_email_reply_all_the_others_are_copied(mail, smtp_server):
    mail.put(conversation(email_reply_all=True))
    sendgrid = {
        **SENDGRID,
        "to": "Company Support <support@company.example>, Max Colleague <max@zoe-employer.example>",
        "headers": SENDGRID["headers"] + "References: <a@x.example> <b@x.example>\nCc: Ann <ann@x.example>\n",
    }

    envelope, sent = sent_by_smtp(mail, smtp_server, sendgrid_event(sendgrid_bytes(sendgrid)))

    assert sent["Cc"] == "Max Colleague <max@zoe-employer.example>, Ann <ann@x.example>"
    assert sorted(envelope.rcpt_tos) == ["ann@x.example", "max@zoe-employer.example", "zoe@example.org"]
    assert sent["References"] == "<a@x.example> <b@x.example> <CAE6aW=sendgrid1@mail.example.org>"


def test_postmarks_own_id_never_threads_a_reply(mail, smtp_server):
    inbound = {**POSTMARK, "Headers": [{"Name": "X-Spam-Status", "Value": "No"}]}  # no Message-ID header
    event = provider_event("postmark", json.dumps(inbound), "application/json")

    _, sent = sent_by_smtp(mail, smtp_server, event)

    assert sent["In-Reply-To"] is None and sent["References"] is None
    [user] = [m for m in mail.get()["messages"] if m["role"] == "user"]
    assert user["message_id"] == POSTMARK["MessageID"]  # still the dedupe key


def test_the_reply_headers_are_what_a_mail_client_threads_on():
    from replies_engine.adapters.senders import reply_email

    note = {
        "from": "Company Support <support@company.example>",
        "to": "zoe@example.org",
        "cc": ["max@x.example"],
        "subject": "Re: Re: your appointment",
        "in_reply_to": "<m2@mail.example.org>",
        "references": ["<m1@company.example>", "<m2@mail.example.org>"],
        "texts": ["Friday it is."],
    }

    sent = reply_email(note, 0)

    assert sent["Subject"] == "Re: Re: your appointment"  # never stacked further
    assert sent["References"] == "<m1@company.example> <m2@mail.example.org>"
    assert sent["Cc"] == "max@x.example"


@pytest.mark.parametrize(
    "raw",
    [
        b"From: zoe@example.org\r\nMessage-ID: <@>\r\n\r\nhi",
        b"From: =?utf-8?q?a=0D=0Ab?= <zoe@example.org>\r\nMessage-ID: <x@y>\r\n\r\nhi",
        b'From: zoe@example.org\r\nContent-Type: text/plain; charset="utf-8\x00"\r\n\r\nhi',
        b"From: zoe@example.org\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!",
        b"just some words",
    ],
    ids=["message-id-<@>", "encoded-line-break", "nul-in-charset", "bad-base64", "not-a-mail"],
)
def test_hostile_raw_mail_is_read_or_refused_never_an_internal_error(mail, raw):
    fields = {k: v for k, v in SENDGRID.items() if k not in ("headers", "text")}
    answer = mail.handle(sendgrid_event(sendgrid_bytes({**fields, "email": raw})))

    assert answer["statusCode"] in (200, 400, 404), answer["body"]
    assert "INTERNAL_ERROR" not in answer["body"]


@pytest.mark.parametrize("charsets", ['{"text": 5}', '{"text": "utf-8\\u0000"}', '["x"]', "\xff"])
def test_sendgrid_charsets_of_any_shape_never_break_the_intake(mail, charsets):
    body = sendgrid_bytes(
        {**SENDGRID, "text": GRUSS.encode("windows-1252"), "charsets": charsets.encode("latin-1")}
    )

    assert mail.handle(sendgrid_event(body))["statusCode"] == 200
    assert queued(mail)[0]["body"] == GRUSS


def test_a_reply_to_on_another_domain_is_not_followed_unless_the_record_trusts_it(mail, smtp_server):
    forged = email_json("Send me my booking details", reply_to="attacker@evil.example")

    envelope, _ = sent_by_smtp(mail, smtp_server, email_event(forged))

    assert envelope.rcpt_tos == ["Zoe@Example.org"]  # the address whose conversation it is


def test_a_long_quoted_history_is_not_queued_but_the_reply_is_and_an_endless_text_is_refused(mail):
    history = "\n".join(f"> line {n} of a long thread" for n in range(8000))  # ~230 KB of quotes
    long_thread = email_json("Yes, Friday.\n\nOn Thu, Support wrote:\n" + history)

    assert mail.handle(email_event(long_thread))["statusCode"] == 200
    [context] = queued(mail)
    assert context["body"] == "Yes, Friday." and "raw_text" not in context

    endless = mail.handle(email_event(email_json("word " * 40_000)))
    assert endless["statusCode"] == 400 and "more than a queue message holds" in endless["body"]
