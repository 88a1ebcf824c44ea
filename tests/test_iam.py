"""The IAM emulation (tests/iam.py): IAM's matching, what a call needs, and proof that it bites: a grant
taken from one role makes the public handler's call fail as in AWS, and the test with it."""

from __future__ import annotations

import copy
import logging
import threading
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from . import iam
from .aws import ACCOUNT, REGION, Stack
from .iam import Need, Unsupported, matches, needs, queue_arn, secret_arn, table_arn
from .payloads import twilio_event, whatsapp_text

TABLE = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/t1-conversations"
aws_only = pytest.mark.aws_only  # the tests that run the handlers on moto, with an `engine`


@pytest.mark.parametrize(
    ("pattern", "value", "matched"),
    [
        ("dynamodb:*", "dynamodb:GetItem", True),
        ("DynamoDB:getitem", "dynamodb:GetItem", True),  # actions: any case
        ("dynamodb:Get*", "dynamodb:PutItem", False),
        ("sqs:?endMessage", "sqs:SendMessage", True),
        ("sqs:?endMessage", "sqs:SendMessageBatch", False),
        ("*", "xray:PutTraceSegments", True),
    ],
)
def test_actions_match_case_insensitively_with_wildcards(pattern, value, matched):
    assert matches(pattern, value, ignore_case=True) is matched


@pytest.mark.parametrize(
    ("pattern", "value", "matched"),
    [
        (TABLE, TABLE, True),
        (TABLE.replace("t1-", "T1-"), TABLE, False),  # resources: case-sensitive
        (f"{TABLE}/index/*", f"{TABLE}/index/gsi-locked", True),
        (f"{TABLE}/index/*", TABLE, False),  # an index grant is not the table's
        (TABLE, f"{TABLE}/index/gsi-locked", False),  # nor the table's an index's
        ("arn:aws:secretsmanager:*:*:secret:/x/twilio-??????", secret_arn("/x/twilio"), True),
        ("arn:aws:secretsmanager:*:*:secret:/x/twilio-?????", secret_arn("/x/twilio"), False),
        ("arn:aws:sqs:us-east-1:1:a.b", "arn:aws:sqs:us-east-1:1:a-b", False),  # `.` is no wildcard
        ("*", queue_arn("q"), True),
    ],
)
def test_resources_match_case_sensitively_with_wildcards(pattern, value, matched):
    assert matches(pattern, value) is matched


def test_a_transaction_needs_each_items_own_action_on_its_table():
    params = {
        "TransactItems": [
            {"Update": {"TableName": "t1-conversations", "Key": {}, "UpdateExpression": "SET a = :a"}},
            {"Put": {"TableName": "t1-messages", "Item": {}}},
            {"ConditionCheck": {"TableName": "t1-messages", "Key": {}, "ConditionExpression": "x"}},
            {"Delete": {"TableName": "t1-messages", "Key": {}}},
        ]
    }
    messages = table_arn("t1-messages")

    assert needs("dynamodb", "TransactWriteItems", params) == [
        Need("dynamodb:UpdateItem", (TABLE,)),
        Need("dynamodb:PutItem", (messages,)),
        Need("dynamodb:ConditionCheckItem", (messages,)),
        Need("dynamodb:DeleteItem", (messages,)),
    ]


def test_other_calls_need_what_iam_checks_for_them():
    url = "http://127.0.0.1:5000/123456789012/t1-AiQueue"

    assert needs("dynamodb", "Query", {"TableName": "t1-conversations", "IndexName": "gsi-locked"}) == [
        Need("dynamodb:Query", (f"{TABLE}/index/gsi-locked",))
    ]
    assert needs("dynamodb", "BatchGetItem", {"RequestItems": {"t1-conversations": {}}}) == [
        Need("dynamodb:BatchGetItem", (TABLE,))
    ]
    assert needs("sqs", "SendMessageBatch", {"QueueUrl": url, "Entries": []}) == [
        Need("sqs:SendMessage", (queue_arn("t1-AiQueue"),))
    ]
    assert needs("ses", "SendEmail", {"FromEmailAddress": "Support <help@company.example>"}) == [
        Need(
            "ses:SendEmail",
            (
                f"arn:aws:ses:{REGION}:{ACCOUNT}:identity/help@company.example",
                f"arn:aws:ses:{REGION}:{ACCOUNT}:identity/company.example",
            ),
        )
    ]
    with pytest.raises(Unsupported, match="cannot tell the resource"):
        needs("lambda", "Invoke", {"FunctionName": "f"})


@pytest.mark.parametrize(
    "statement",
    [
        {"Effect": "Deny", "Action": "sqs:*", "Resource": "*"},
        {"Effect": "Allow", "NotAction": "sqs:*", "Resource": "*"},
        {"Effect": "Allow", "Action": "sqs:*", "Resource": "*", "Condition": {"Bool": {"aws:x": "true"}}},
    ],
    ids=["Deny", "NotAction", "Condition"],
)
def test_a_policy_it_cannot_judge_is_refused_not_guessed(statement):
    with pytest.raises(Unsupported):
        iam.statements({"Statement": [statement]}, "test")


# --- enforced on the AWS backend ------------------------------------------------------------------


def revoke(stack: Stack, function: str, action: str, arn: str) -> dict[str, Any]:
    """The translated template with `function`'s role no longer granting `action` on `arn` (and all
    else as before); fails if the role did not grant it."""
    document = copy.deepcopy(iam.translated())
    resolver = iam.Resolver(document, stack, {})
    role = iam.referenced(document["Resources"][function]["Properties"]["Role"])
    revoked = False
    for policy in document["Resources"][role]["Properties"]["Policies"]:
        kept = []
        for statement in policy["PolicyDocument"]["Statement"]:
            if "Action" not in statement:  # a conditional one (Fn::If)
                kept.append(statement)
                continue
            actions, resources = statement["Action"], statement["Resource"]
            actions = [actions] if isinstance(actions, str) else actions
            resources = resources if isinstance(resources, list) else [resources]
            if action not in actions or arn not in map(resolver, resources):
                kept.append(statement)
                continue
            revoked = True
            if others := [a for a in actions if a != action]:
                kept.append({**statement, "Action": others})
            if rest := [r for r in resources if resolver(r) != arn]:
                kept.append({**statement, "Action": [action], "Resource": rest})
        policy["PolicyDocument"]["Statement"] = kept
    assert revoked, f"{function}'s role does not grant {action} on {arn}"
    return document


def whatsapp_queue(engine) -> str:
    return queue_arn(engine.stack.queue_names["WhatsappQueue"])


@aws_only
def test_the_webhook_without_send_on_the_whatsapp_queue_is_refused_as_aws_would(engine, caplog):
    document = revoke(engine.stack, "IncomingWebhookHandler", "sqs:SendMessage", whatsapp_queue(engine))

    with iam.enforced(engine.stack, document=document) as enforcement, caplog.at_level(logging.ERROR):
        engine.handle(twilio_event("whatsapp", whatsapp_text()))

    assert [(d.function, d.action, d.resource) for d in enforcement.denials] == [
        ("IncomingWebhookHandler", "sqs:SendMessage", whatsapp_queue(engine))
    ]
    [refused] = [r for r in caplog.records if getattr(r, "error_code", None)]
    assert refused.error_code == "QUEUE_ERROR" and engine.all_queued() == 0  # as in AWS: not queued
    assert str(refused.reason).startswith(
        "AccessDeniedException: An error occurred (AccessDeniedException) when calling the SendMessage"
        f" operation: User: arn:aws:sts::{ACCOUNT}:assumed-role/"
    )
    assert str(refused.reason).endswith(
        f" is not authorized to perform: sqs:SendMessage on resource: {whatsapp_queue(engine)} because"
        " no identity-based policy allows the sqs:SendMessage action"
    )


@aws_only
def test_the_reply_function_without_update_on_the_conversations_table_cannot_reply(engine):
    engine.env(BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0")
    engine.handle(twilio_event("whatsapp", whatsapp_text()))
    assert engine.deliver("whatsapp") == 1
    table = table_arn(engine.stack.refs["ConversationsTable"])
    document = revoke(engine.stack, "ReplySenderLambda", "dynamodb:UpdateItem", table)

    with iam.enforced(engine.stack, document=document) as enforcement:
        engine.deliver("ai")

    assert ("ReplySenderLambda", "dynamodb:UpdateItem", table) in {
        (d.function, d.action, d.resource) for d in enforcement.denials
    }
    assert engine.outbox() == []


def test_the_error_is_the_one_aws_returns():
    """A thread of the webhook function (as if it had started it) reads a secret its role does not name:
    refused before it is sent, as AWS answers."""
    secrets = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client("secretsmanager", endpoint_url="http://127.0.0.1:9")  # nothing listens: nothing is sent
    caught: list[ClientError] = []

    def call() -> None:
        threading.current_thread()._iam_caller = (enforcement, "IncomingWebhookHandler")  # type: ignore[attr-defined]
        try:
            secrets.get_secret_value(SecretId="/replies-engine/other/twilio")
        except ClientError as exc:
            caught.append(exc)

    with iam.enforced(FakeStack()) as enforcement:  # type: ignore[arg-type]
        thread = threading.Thread(target=call)
        thread.start()
        thread.join()

    [error] = caught
    role = enforcement.role("IncomingWebhookHandler")
    assert error.response["Error"]["Code"] == "AccessDeniedException"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert str(error) == (
        "An error occurred (AccessDeniedException) when calling the GetSecretValue operation: User:"
        f" arn:aws:sts::{ACCOUNT}:assumed-role/{role.name}/{role.function_name}"
        " is not authorized to perform: secretsmanager:GetSecretValue on resource:"
        f" {secret_arn('/replies-engine/other/twilio')} because no identity-based policy allows the"
        " secretsmanager:GetSecretValue action"
    )
    assert [c.function for c in enforcement.denials] == ["IncomingWebhookHandler"]


class FakeStack:
    """A Stack's names without moto."""

    prefix = "tfake"

    def __init__(self) -> None:
        resources = iam.translated()["Resources"]
        self.queue_names = {k: f"tfake-{k}" for k, v in resources.items() if v["Type"] == "AWS::SQS::Queue"}
        self.refs = {k: f"http://127.0.0.1/{ACCOUNT}/{v}" for k, v in self.queue_names.items()}
        self.refs.update(
            {k: f"tfake-{k}" for k, v in resources.items() if v["Type"] == "AWS::DynamoDB::Table"}
        )
        self.refs.update(
            {
                k: f"arn:aws:sns:{REGION}:{ACCOUNT}:tfake-{k}"
                for k, v in resources.items()
                if v["Type"] == "AWS::SNS::Topic"
            }
        )


@aws_only
def test_calls_are_attributed_to_the_function_whose_code_or_trigger_makes_them(engine):
    """The poller's receive and delete: the role of the function the queue triggers; the heartbeat
    thread's lease renewal: the reply function's; the test's own calls: nobody's."""
    engine.env(
        BATCH_DELAY_SECONDS="0",
        BATCH_WINDOW_SECONDS="0",
        LOCK_TIMEOUT_SECONDS="1",
        LOCAL_RESPONDER_DELAY_SECONDS="0.5",
    )
    enforcement = iam.active()
    engine.get()
    assert enforcement.checks == []

    engine.handle(twilio_event("whatsapp", whatsapp_text()))
    engine.deliver("whatsapp")
    engine.deliver("ai")

    seen = {(c.function, c.action, c.resource.rsplit(":", 1)[1]) for c in enforcement.checks}
    queue = engine.stack.queue_names
    assert ("BatchProcessorLambda", "sqs:ReceiveMessage", queue["WhatsappQueue"]) in seen
    assert ("BatchProcessorLambda", "sqs:DeleteMessage", queue["WhatsappQueue"]) in seen
    assert ("ReplySenderLambda", "sqs:ReceiveMessage", queue["AiQueue"]) in seen
    heartbeat = [c for c in enforcement.checks if c.thread.startswith("heartbeat-")]
    assert heartbeat and {(c.function, c.action) for c in heartbeat} == {
        ("ReplySenderLambda", "dynamodb:UpdateItem")
    }
    assert engine.outbox() and enforcement.denials == []


@aws_only
def test_parameters_follow_the_functions_environment_and_conditions_follow_them(engine):
    """TWILIO_SECRET_NAME=/replies-engine/{X}/twilio means EnvironmentName=X; EMAIL_SENDER=ses means
    EmailSender=ses, which a condition may grant SES on, for identities a list parameter names."""
    document = copy.deepcopy(iam.translated())
    document["Parameters"]["TestIdentities"] = {"Type": "CommaDelimitedList", "Default": ""}
    document["Conditions"]["TestSes"] = {"Fn::Equals": [{"Ref": "EmailSender"}, "ses"]}
    identities = {"Fn::Join": [",arn:aws:ses:*:*:identity/", {"Ref": "TestIdentities"}]}
    grant = {
        "Effect": "Allow",
        "Action": "ses:SendEmail",
        "Resource": {"Fn::Split": [",", {"Fn::Join": ["", ["arn:aws:ses:*:*:identity/", identities]]}]},
    }
    role = iam.referenced(document["Resources"]["ReplySenderLambda"]["Properties"]["Role"])
    document["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"] = [
        {"Fn::If": ["TestSes", grant, {"Ref": "AWS::NoValue"}]}
    ]
    identity = f"arn:aws:ses:{REGION}:{ACCOUNT}:identity/"
    send = Need("ses:SendEmail", (identity + "help@company.example", identity + "company.example"))
    elsewhere = Need("ses:SendEmail", (identity + "help@other.example", identity + "other.example"))
    twilio = Need(
        "secretsmanager:GetSecretValue", (secret_arn(f"/replies-engine/{engine.stack.prefix}/twilio"),)
    )
    parameters = {"TestIdentities": "company.example,partner.example"}

    with iam.enforced(engine.stack, document=document, parameters=parameters) as enforcement:
        assert not enforcement.role("ReplySenderLambda").allows(send)  # EmailSender's default: outbox
        assert not enforcement.role("IncomingWebhookHandler").allows(twilio)  # EnvironmentName's: dev
        engine.env(EMAIL_SENDER="ses", TWILIO_SECRET_NAME=f"/replies-engine/{engine.stack.prefix}/twilio")

        assert enforcement.role("ReplySenderLambda").allows(send)
        assert not enforcement.role("ReplySenderLambda").allows(elsewhere)
        assert enforcement.role("IncomingWebhookHandler").allows(twilio)
