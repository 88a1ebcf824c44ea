"""What only the AWS backend has: botocore faults and their error codes, DynamoDB's conditional writes
under a race, Secrets Manager, and the number of AWS requests a message costs."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError

from replies_engine.adapters.aws.clients import client
from replies_engine.adapters.aws.secrets import twilio_credentials
from replies_engine.webhook.responses import TransientWebhookError

from .conftest import conversation
from .payloads import email_event, email_json, twilio_event, whatsapp_text

pytestmark = pytest.mark.aws_only


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **kwargs):
        yield self.data


@pytest.fixture
def inject():
    """inject(service, operation, code) → that call answers with the AWS error `code` (or raises a
    timeout for code="timeout"); returns a Counter of how often it was tried (botocore retries)."""
    hooks = []

    def install(service: str, operation: str, code: str, status: int = 400) -> Counter:
        tries: Counter = Counter()

        def answer(request, **kwargs):
            tries[operation] += 1
            if code == "timeout":
                raise ReadTimeoutError(endpoint_url=request.url)
            body = json.dumps({"__type": f"com.amazonaws.{service}#{code}", "message": "injected"}).encode()
            headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-query-error": f"{code};Sender"}
            return AWSResponse(request.url, status, headers, _Body(body))

        event = f"before-send.{service}.{operation}"
        client(service).meta.events.register(event, answer)
        hooks.append((service, event, answer))
        return tries

    yield install
    for service, event, answer in hooks:
        client(service).meta.events.unregister(event, answer)


def error_code(response):
    return json.loads(response["body"])["error_code"]


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("ProvisionedThroughputExceededException", 400),
        ("ThrottlingException", 400),
        ("InternalServerError", 500),
        ("timeout", 0),
    ],
)
def test_transient_dynamodb_faults_make_twilio_retry(engine, inject, code, status):
    tries = inject("dynamodb", "Query", code, status)

    with pytest.raises(TransientWebhookError) as raised:
        engine.handle(twilio_event("whatsapp", whatsapp_text()))
    assert raised.value.error_code == "DB_TRANSIENT_ERROR"
    assert error_code(engine.handle(email_event(email_json()))) == "DB_TRANSIENT_ERROR"
    assert tries["Query"] >= 4  # botocore retried before giving up, on each request
    assert engine.all_queued() == 0


def test_other_dynamodb_errors_are_db_query_errors(engine, inject):
    inject("dynamodb", "Query", "ValidationException")

    response = engine.handle(email_event(email_json()))

    assert response["statusCode"] == 500 and error_code(response) == "DB_QUERY_ERROR"


def test_a_missing_table_is_a_configuration_error(engine):
    engine.env(CONVERSATIONS_TABLE="no-such-table")

    assert error_code(engine.handle(email_event(email_json()))) == "CONFIGURATION_ERROR"


@pytest.mark.parametrize(
    ("code", "expected"),
    [("RequestThrottled", "QUEUE_TRANSIENT_ERROR"), ("InvalidParameterValue", "QUEUE_ERROR")],
)
def test_sqs_faults(engine, inject, code, expected):
    inject("sqs", "SendMessage", code)

    assert error_code(engine.handle(email_event(email_json()))) == expected
    if expected == "QUEUE_TRANSIENT_ERROR":
        with pytest.raises(TransientWebhookError):
            engine.handle(twilio_event("whatsapp", whatsapp_text()))


def test_a_queue_without_a_url_is_a_routing_error(engine):
    engine.env(HANDOFF_QUEUE_URL="")
    engine.put(conversation(auto_queue_reply_message=True))

    response = engine.handle(email_event(email_json()))

    assert response["statusCode"] == 500 and error_code(response) == "ROUTING_ERROR"


def test_a_lock_race_on_dynamodb_has_exactly_one_winner_over_many_runs(engine):
    store, runs, racers = engine.runtime.store, 25, 6
    winners = []
    for run in range(runs):
        engine.put(conversation())
        barrier, outcomes = threading.Barrier(racers), []

        def race(n, run=run, barrier=barrier, outcomes=outcomes):
            barrier.wait()
            message = {"message_id": f"SM{run}-{n}", "role": "user", "content": str(n)}
            outcomes.append(
                store.lock_and_append(
                    "c1", f"batch-{n}", [message], now=time.time(), lock_timeout_seconds=300
                )
            )

        threads = [threading.Thread(target=race, args=(n,)) for n in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        acquired = [o for o in outcomes if o.status == "acquired"]
        winners.append(len(acquired))
        record = engine.get()
        assert record["lock_owner"] == acquired[0].record["lock_owner"]
        assert len(record["messages"]) == 2  # the old one and the winner's, nobody else's
        assert all(o.status == "locked" for o in outcomes if o.status != "acquired")
    assert winners == [1] * runs


def test_the_twilio_token_comes_from_secrets_manager_once_per_container(engine, inject):
    engine.stack.secrets.create_secret(
        Name=f"/replies-engine/{engine.stack.prefix}/twilio",
        SecretString=json.dumps({"account_sid": "AC" + "1" * 32, "auth_token": "f" * 32}),
    )
    engine.env(TWILIO_AUTH_TOKEN="", TWILIO_SECRET_NAME=f"/replies-engine/{engine.stack.prefix}/twilio")
    twilio_credentials.cache_clear()
    calls = Counter()
    client("secretsmanager").meta.events.register(
        "before-call.secrets-manager.GetSecretValue", lambda **kw: calls.update(["GetSecretValue"])
    )

    signed = [engine.handle(twilio_event("whatsapp", whatsapp_text(), token="f" * 32)) for _ in range(3)]
    forged = engine.handle(twilio_event("whatsapp", whatsapp_text()))

    assert [r["statusCode"] for r in signed] == [200, 200, 200] and forged["statusCode"] == 403
    assert calls["GetSecretValue"] == 1
    assert engine.runtime.twilio_account_sid() == "AC" + "1" * 32
    assert type(engine.runtime.senders["whatsapp"]).__name__ == "TwilioSender"


def count_requests():
    """Every AWS request our code makes, by service.Operation (botocore's before-call event)."""
    seen: list[str] = []

    def record(model, **kwargs):
        seen.append(f"{model.service_model.service_name}.{model.name}")

    for service in ("dynamodb", "sqs"):
        client(service).meta.events.register(f"before-call.{service}", record)
    return seen


def test_aws_requests_of_one_message_end_to_end(engine):
    engine.env(BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0")
    engine.runtime  # noqa: B018 (built before counting)
    seen = count_requests()

    engine.handle(twilio_event("whatsapp", whatsapp_text()))
    stage1 = list(seen)
    engine.deliver("whatsapp")
    engine.deliver("ai")

    # stage 1: find the conversation, queue the message
    assert stage1 == ["dynamodb.Query", "sqs.SendMessage"]
    ours = [
        call for call in seen if call not in ("sqs.ReceiveMessage", "sqs.DeleteMessage")
    ]  # Lambda's poller
    assert ours == [
        "dynamodb.Query",
        "sqs.SendMessage",  # stage 1
        "dynamodb.GetItem",
        "dynamodb.UpdateItem",
        "sqs.SendMessage",  # stage 2: read, lock+append, AI queue
        "dynamodb.GetItem",
        "dynamodb.GetItem",  # stage 3: the lock's holder, before and after the responder
        "sqs.SendMessage",
        "dynamodb.UpdateItem",  # the reply (to the outbox: no Twilio account here), unlock
    ]
    assert engine.get()["conversation_status"] == "ai_response_sent"


def test_aws_calls_become_xray_subsegments_under_the_lambda_segment(engine, monkeypatch):
    daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    daemon.bind(("127.0.0.1", 0))
    daemon.settimeout(5)
    monkeypatch.setenv("AWS_XRAY_DAEMON_ADDRESS", f"127.0.0.1:{daemon.getsockname()[1]}")
    monkeypatch.setenv(
        "_X_AMZN_TRACE_ID", "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    )
    client.cache_clear()  # a new container: its clients are made under X-Ray
    try:
        engine.handle(twilio_event("whatsapp", whatsapp_text()))
        documents = []
        for _ in range(2):
            header, _, body = daemon.recv(65536).partition(b"\n")
            assert json.loads(header) == {"format": "json", "version": 1}
            documents.append(json.loads(body))
    finally:
        client.cache_clear()
        daemon.close()

    assert [(d["name"], d["aws"]["operation"]) for d in documents] == [
        ("DynamoDB", "Query"),
        ("SQS", "SendMessage"),
    ]
    for document in documents:
        assert document["trace_id"] == "1-5759e988-bd862e3fe1be46a994272793"
        assert document["parent_id"] == "53995c3f42cd8ad8" and document["type"] == "subsegment"
        assert document["end_time"] >= document["start_time"] and document["fault"] is False
    assert documents[0]["aws"]["table_name"] == engine.stack.refs["ConversationsTable"]
    assert documents[1]["aws"]["queue_url"] == engine.stack.queue_url("whatsapp")


def test_a_long_conversation_stays_under_dynamodbs_item_limit_without_losing_a_message(engine, monkeypatch):
    from replies_engine.adapters.aws import store as dynamo

    monkeypatch.setattr(dynamo, "ITEM_BUDGET", 6_000)  # 400 KB in miniature
    store = engine.runtime.store
    sent = []
    for n in range(40):
        message = {"message_id": f"SM{n:04d}", "role": "user", "content": f"message {n} " + "x" * 200}
        sent.append(message["message_id"])
        assert (
            store.lock_and_append("c1", f"b{n}", [message], now=time.time(), lock_timeout_seconds=300).status
            == "acquired"
        )
        assert store.release_lock("c1", f"b{n}", status="ai_response_sent", now=time.time())

    record = engine.get()
    assert len(json.dumps(record)) <= 6_000
    archives = [
        item
        for item in engine.stack.dynamodb.scan(TableName=engine.stack.refs["ConversationsTable"])["Items"]
        if item.get("archive_of", {}).get("S") == "c1"
    ]
    archived = [
        m["M"]["message_id"]["S"]
        for a in sorted(archives, key=lambda a: a["conversation_id"]["S"])
        for m in a["messages"]["L"]
    ]
    kept = [m["message_id"] for m in record["messages"]]
    assert archived + kept == ["SMold", *sent]  # every message once, in order
    assert [r["conversation_id"] for r in store.list()] == ["c1"]  # archives are not conversations
