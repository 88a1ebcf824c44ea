"""Bounces and complaints stop us, on both backends: Amazon SES's notifications (the documented shapes,
"Amazon SES notification contents", delivered by SNS to the function) mark the conversation
`email_suppressed` and hand it to a human; no further email reply goes to it, from the AI or an
operator; a transient bounce is recorded only."""

from __future__ import annotations

import copy
import json

import pytest

from replies_engine.handlers import email_feedback_handler
from replies_engine.handoff import OperatorError, human_reply

from .payloads import email_event, email_json

# Amazon SES Developer Guide, "Examples of Amazon SES notifications": a bounce (addresses ours)
BOUNCE = {
    "notificationType": "Bounce",
    "bounce": {
        "bounceType": "Permanent",
        "bounceSubType": "General",
        "bouncedRecipients": [
            {"emailAddress": "zoe@example.org", "action": "failed", "status": "5.1.1",
             "diagnosticCode": "smtp; 550 5.1.1 user unknown"}
        ],
        "timestamp": "2016-01-27T14:59:38.237Z",
        "feedbackId": "00000137860315fd-869464a4-8680-4114-98d3-716fe35851f9-000000",
        "remoteMtaIp": "127.0.2.0",
        "reportingMTA": "dsn; a8-70.smtp-out.amazonses.com",
    },
    "mail": {
        "timestamp": "2016-01-27T14:59:38.237Z",
        "messageId": "00000137860315fd-34208509-5b74-41f3-95c5-22c1edc3c924-000000",
        "source": "Company Support <support@company.example>",
        "sourceArn": "arn:aws:ses:us-east-1:888888888888:identity/company.example",
        "sourceIp": "127.0.3.0",
        "sendingAccountId": "123456789012",
        "callerIdentity": "IAM_user_or_role_name",
        "destination": ["zoe@example.org"],
    },
}  # fmt: skip
COMPLAINT = {
    "notificationType": "Complaint",
    "complaint": {
        "userAgent": "AnyCompany Feedback Loop (V0.01)",
        "complainedRecipients": [{"emailAddress": "Zoe@Example.org"}],
        "complaintFeedbackType": "abuse",
        "arrivalDate": "2016-01-27T14:59:38.237Z",
        "timestamp": "2016-01-27T14:59:38.237Z",
        "feedbackId": "000001378603177f-18c07c78-fa81-4a58-9dd1-fedc3cb8f49a-000000",
    },
    "mail": BOUNCE["mail"],
}


def sns(*notifications: dict) -> dict:
    """The SNS event a subscribed function receives (AWS Lambda Developer Guide, "Using Lambda with
    Amazon SNS", the example event)."""
    return {
        "Records": [
            {
                "EventVersion": "1.0",
                "EventSubscriptionArn": "arn:aws:sns:us-east-1:123456789012:feedback:c9135db0",
                "EventSource": "aws:sns",
                "Sns": {
                    "SignatureVersion": "1",
                    "Timestamp": "2019-01-02T12:45:07.000Z",
                    "Signature": "tcc6faL2yUC6dgZdmrwh1Y4cGa/ebXEkAi6RibDsvpi+tE/1+82j...65r==",
                    "SigningCertUrl": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService.pem",
                    "MessageId": f"95df01b4-ee98-5cb9-9903-4c221d41eb5{n}",
                    "Message": json.dumps(notification),
                    "MessageAttributes": {},
                    "Type": "Notification",
                    "UnsubscribeUrl": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
                    "TopicArn": "arn:aws:sns:us-east-1:123456789012:feedback",
                    "Subject": None,
                },
            }
            for n, notification in enumerate(notifications)
        ]
    }


@pytest.fixture
def mail(engine):
    # SES sends the replies: the stack has the feedback function then (its role enforced on AWS)
    engine.env(BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0", EMAIL_SENDER="ses")
    return engine


@pytest.mark.parametrize("notification", [BOUNCE, COMPLAINT], ids=["permanent-bounce", "complaint"])
def test_a_permanent_bounce_or_a_complaint_stops_email_and_hands_the_conversation_over(mail, notification):
    assert email_feedback_handler(sns(notification), None) == {"suppressed": 1, "recorded": 0}

    record = mail.get()
    assert record["email_suppressed"]["reason"].startswith(notification["notificationType"].lower())
    assert record["owner"] == "human" and record["handed_off_by"] == "email"
    assert [n["body"]["kind"] for n in mail.queued("handoff")] == ["handoff"]

    # the person writes again: a human's, never the AI's, and nothing goes by email
    assert mail.handle(email_event(email_json("Are you there?")))["statusCode"] == 200
    assert mail.queued("email") == [] and len(mail.queued("handoff")) == 2
    with pytest.raises(OperatorError, match="no email goes to it") as refused:
        human_reply(mail.runtime, "c1", "Sam here.", "sam")
    assert refused.value.status == 409 and mail.outbox() == []


def test_an_ai_reply_already_under_way_is_not_sent_to_a_suppressed_address(mail):
    assert mail.handle(email_event(email_json("Can we talk tomorrow?")))["statusCode"] == 200
    mail.deliver("email")  # the batch holds the lock, its context on the AI queue
    email_feedback_handler(sns(BOUNCE), None)

    mail.deliver("ai")

    assert mail.outbox() == [] and mail.get()["conversation_status"] != "ai_response_sent"


def test_a_transient_bounce_is_recorded_and_changes_nothing_else(mail):
    transient = copy.deepcopy(BOUNCE)
    transient["bounce"].update(bounceType="Transient", bounceSubType="MailboxFull")

    assert email_feedback_handler(sns(transient), None) == {"suppressed": 0, "recorded": 1}

    record = mail.get()
    assert "MailboxFull" in record["email_last_bounce"]["reason"] and "email_suppressed" not in record
    assert record.get("owner") != "human" and mail.queued("handoff") == []


def test_notifications_that_are_not_feedback_or_not_ours_change_nothing(mail):
    other = {**BOUNCE, "mail": {**BOUNCE["mail"], "source": "someone@else.example"}}
    delivery = {"notificationType": "Delivery", "mail": BOUNCE["mail"], "delivery": {}}
    broken = {"Records": [{"Sns": {"Message": "not json"}}, {"nothing": True}]}

    assert email_feedback_handler(sns(other, delivery), None) == {"suppressed": 0, "recorded": 0}
    assert email_feedback_handler(broken, None) == {"suppressed": 0, "recorded": 0}
    assert "email_suppressed" not in mail.get() and mail.queued("handoff") == []
