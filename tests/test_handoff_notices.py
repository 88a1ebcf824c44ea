"""People are told when a person waits for a human, on both backends: the handoff queue's consumer sends
ONE notice per hand-off (a routing rule's, the AI's, an operator's), never one per message, and tells
the operator holding a conversation of each new message; to a webhook (JSON, Slack-compatible `text`,
signed like the requests to your agent) and, on AWS, to an SNS topic. A notice that does not go is
retried, then dead-lettered; the person's words never travel in a notice."""

from __future__ import annotations

import json

import pytest

from replies_engine.ports import Handoff
from replies_engine.signing import verify_signature

from .conftest import conversation
from .fakes import Loopback
from .payloads import BASE
from .test_handoff import TOKEN, post

SECRET = "notice-secret"


@pytest.fixture
def receiver():
    server = Loopback({"/hooks/handoff": [(200, b"ok")]})
    yield server
    server.close()


@pytest.fixture
def told(engine, receiver):
    engine.env(
        OPERATOR_TOKEN=TOKEN,
        HANDOFF_WEBHOOK_URL=f"{receiver.url}/hooks/handoff",
        HANDOFF_WEBHOOK_SECRET=SECRET,
    )
    return engine


def notices(receiver) -> list[dict]:
    """The notices the webhook was sent, each signature checked."""
    found = []
    for request in receiver.requests:
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert verify_signature(
            SECRET, headers["x-replies-timestamp"], request["body"], headers["x-replies-signature"]
        )
        found.append(json.loads(request["body"]))
    return found


def test_a_rule_hand_off_is_told_once_however_many_messages_follow(told, receiver):
    told.put(conversation(auto_queue_reply_message=True, profile_name="Zoë"))
    for text in ("Hello?", "I need a person", "it is urgent"):
        post(told, text)

    assert told.deliver("handoff") == 3

    [notice] = notices(receiver)
    assert notice["kind"] == "handoff" and notice["by"] == "rule" and notice["conversation_id"] == "c1"
    assert notice["text"].startswith("Zoë (+49151•••678) waits for a human on whatsapp: a routing rule.")
    assert notice["inbox_url"] == f"{BASE}/inbox"
    assert "urgent" not in json.dumps(notice) and "4915112345678" not in json.dumps(notice)
    assert told.queued("handoff") == []


def test_the_ai_asking_for_a_human_is_told(told, receiver, monkeypatch):
    monkeypatch.setattr(told.runtime.responder, "respond", lambda context: Handoff("wants a refund"))
    post(told, "I want my money back")
    told.deliver("whatsapp")
    told.deliver("ai")

    told.deliver("handoff")

    [notice] = notices(receiver)
    assert (notice["kind"], notice["by"]) == ("handoff", "ai")
    assert notice["text"].endswith(f"waits for a human on whatsapp: the AI asked for one. {BASE}/inbox")
    assert "refund" not in json.dumps(notice)  # the AI's own reason may quote the person: the inbox shows it


def test_the_operator_holding_a_conversation_is_told_of_each_new_message(told, receiver):
    from replies_engine.handoff import assign

    told.put(conversation(auto_queue_reply_message=True))
    post(told, "Hello?")
    told.deliver("handoff")
    assign(told.runtime, "c1", "sam")

    post(told, "are you there?")
    post(told, "hello??")
    told.deliver("handoff")

    kinds = [(n["kind"], n.get("to")) for n in notices(receiver)]
    assert kinds == [("handoff", None), ("message", "sam"), ("message", "sam")]


def test_a_notice_that_does_not_go_is_retried_not_lost(told, receiver):
    receiver.routes["/hooks/handoff"] = [(503, b"busy"), (200, b"ok")]
    told.put(conversation(auto_queue_reply_message=True))
    post(told, "Hello?")
    told.env(REPLIES_VISIBILITY_TIMEOUT_SECONDS="1")

    assert told.deliver("handoff") == 1  # handed over, failed: back on the queue
    assert len(told.queued("handoff")) == 1
    told.deliver("handoff")  # visible again after its visibility timeout

    first, again = notices(receiver)  # refused (503), then taken
    assert first == again and first["kind"] == "handoff"
    assert told.queued("handoff") == [] and told.queued("handoff-dlq") == []


@pytest.mark.aws_only
def test_on_aws_the_hand_off_topic_is_told_too(told, receiver):
    stack = told.stack
    inbox = stack.sqs.create_queue(QueueName=f"{stack.prefix}-subscriber")["QueueUrl"]
    arn = stack.sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    stack.sns.subscribe(TopicArn=stack.refs["HandoffTopic"], Protocol="sqs", Endpoint=arn)
    told.put(conversation(auto_queue_reply_message=True))
    post(told, "Hello?")

    told.deliver("handoff")

    [delivered] = stack.sqs.receive_message(QueueUrl=inbox, WaitTimeSeconds=2)["Messages"]
    published = json.loads(delivered["Body"])
    assert published["Subject"].startswith("A person waits for a human")
    assert published["Message"] == notices(receiver)[0]["text"]
