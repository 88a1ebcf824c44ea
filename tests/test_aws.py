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
from replies_engine.adapters.aws.secrets import secrets_client
from replies_engine.webhook.responses import TransientWebhookError

from .aws import Body, captured_writes, history, item_size
from .conftest import conversation
from .payloads import email_event, email_json, twilio_event, whatsapp_text

pytestmark = pytest.mark.aws_only


def made(service: str):
    """The client our code calls `service` with (Secrets Manager's has an attempt of its own)."""
    return secrets_client() if service == "secretsmanager" else client(service)


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
            return AWSResponse(request.url, status, headers, Body(body))

        event = f"before-send.{service}.{operation}"
        made(service).meta.events.register(event, answer)
        hooks.append((service, event, answer))
        return tries

    yield install
    for service, event, answer in hooks:
        made(service).meta.events.unregister(event, answer)


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
    # the stack's own table gone (another name would be AccessDenied: no role names it)
    engine.stack.dynamodb.delete_table(TableName=engine.stack.refs["ConversationsTable"])
    engine.env()

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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_twilio_token_comes_from_secrets_manager_and_a_rotated_one_works_at_once(engine, secret_reads):
    name = f"/replies-engine/{engine.stack.prefix}/twilio"
    engine.stack.secrets.create_secret(
        Name=name, SecretString=json.dumps({"account_sid": "AC" + "1" * 32, "auth_token": "f" * 32})
    )
    engine.env(TWILIO_AUTH_TOKEN="", TWILIO_SECRET_NAME=name)
    engine.runtime.secrets.clock = clock = Clock()
    reads = secret_reads

    signed = [engine.handle(twilio_event("whatsapp", whatsapp_text(), token="f" * 32)) for _ in range(3)]
    forged = [engine.handle(twilio_event("whatsapp", whatsapp_text())) for _ in range(3)]

    assert [r["statusCode"] for r in signed + forged] == [200] * 3 + [403] * 3
    assert reads[name] == 1  # cached; forged requests do not make it read again within seconds
    assert engine.runtime.twilio_account_sid() == "AC" + "1" * 32
    assert type(engine.runtime.senders["whatsapp"]).__name__ == "TwilioSender"

    engine.stack.secrets.put_secret_value(
        SecretId=name, SecretString=json.dumps({"account_sid": "AC" + "1" * 32, "auth_token": "e" * 32})
    )
    clock.now += 11  # past the least time between two reads, far within the cache's 5 minutes
    rotated = engine.handle(twilio_event("whatsapp", whatsapp_text(), token="e" * 32))
    old = engine.handle(twilio_event("whatsapp", whatsapp_text(), token="f" * 32))

    assert rotated["statusCode"] == 200 and old["statusCode"] == 403
    assert reads[name] == 2


def test_the_engine_secret_holds_the_email_token_and_is_reread_after_its_cache(engine, secret_reads):
    name = f"/replies-engine/{engine.stack.prefix}/engine"
    engine.stack.secrets.create_secret(Name=name, SecretString=json.dumps({"EMAIL_WEBHOOK_TOKEN": "a" * 40}))
    engine.env(EMAIL_WEBHOOK_TOKEN="", ENGINE_SECRET_NAME=name)
    engine.runtime.secrets.clock = clock = Clock()
    reads = secret_reads

    assert engine.handle(email_event(email_json(), token="a" * 40))["statusCode"] == 200
    assert engine.handle(email_event(email_json(), token="wrong"))["statusCode"] == 403
    engine.stack.secrets.put_secret_value(
        SecretId=name, SecretString=json.dumps({"EMAIL_WEBHOOK_TOKEN": "b" * 40})
    )
    clock.now += 301  # the cache's life: the new token is read without any failure asking for it
    assert engine.runtime.secret("EMAIL_WEBHOOK_TOKEN") == "b" * 40
    assert reads[name] == 2


def test_secrets_manager_failing_keeps_the_copy_and_tries_again_only_after_a_while(
    engine, inject, secret_reads
):
    name = f"/replies-engine/{engine.stack.prefix}/engine"
    engine.stack.secrets.create_secret(Name=name, SecretString=json.dumps({"EMAIL_WEBHOOK_TOKEN": "a" * 40}))
    engine.env(EMAIL_WEBHOOK_TOKEN="", ENGINE_SECRET_NAME=name)
    engine.runtime.secrets.clock = clock = Clock()
    assert engine.runtime.secret("EMAIL_WEBHOOK_TOKEN") == "a" * 40

    inject("secretsmanager", "GetSecretValue", "InternalServiceError", status=500)
    clock.now += 301  # the copy expired: Secrets Manager is asked, and fails
    answers = [engine.handle(email_event(email_json(), token="a" * 40))["statusCode"] for _ in range(3)]

    assert answers == [200, 200, 200] and secret_reads[name] == 2  # one failed try, not one per request
    clock.now += 31
    assert engine.runtime.secret("EMAIL_WEBHOOK_TOKEN") == "a" * 40 and secret_reads[name] == 3


def test_a_stack_without_an_email_credential_refuses_email_and_says_so(engine, capsys):
    engine.env(EMAIL_WEBHOOK_TOKEN="", ENGINE_SECRET_NAME="")

    response = engine.handle(email_event(email_json(), token=None))

    assert response["statusCode"] == 500
    body = json.loads(response["body"])
    assert body["error_code"] == "CONFIGURATION_ERROR" and "EMAIL_WEBHOOK_TOKEN" in body["message"]
    assert engine.all_queued() == 0
    start = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert any(e["level"] == "ERROR" and "email routes refuse" in e["message"] for e in start)


def count_requests():
    """Every AWS request our code makes, by service.Operation (botocore's before-call event)."""
    seen: list[str] = []

    def record(model, **kwargs):
        seen.append(f"{model.service_model.service_name}.{model.name}")

    for service in ("dynamodb", "sqs"):
        client(service).meta.events.register(f"before-call.{service}", record)
    return seen


STAGE_2 = {
    "debounce": [
        "dynamodb.GetItem",  # stage 2, the message: the record,
        "dynamodb.BatchGetItem",  # which ids are stored already (dedupe),
        "dynamodb.TransactWriteItems",  # added to pending_messages (and not in the history meanwhile),
        "sqs.SendMessage",  # its flush token, due after QUIET_SECONDS
        "dynamodb.GetItem",  # the token: the pending messages, due?
        "dynamodb.GetItem",  # the flush's own read, conditioned on pending_version
        "dynamodb.BatchGetItem",  # dedupe against the history
        "dynamodb.TransactWriteItems",  # lock + move the pending messages in
    ],
    "delay": [
        "dynamodb.GetItem",  # stage 2: the record,
        "dynamodb.BatchGetItem",  # which of the batch's message ids are stored already (dedupe),
        "dynamodb.TransactWriteItems",  # lock + append: the record's Update and the message's Put,
    ],
}


@pytest.mark.parametrize("mode", ["debounce", "delay"])
def test_aws_requests_of_one_message_end_to_end(engine, mode):
    engine.env(BATCHING_MODE=mode, BATCH_DELAY_SECONDS="0", BATCH_WINDOW_SECONDS="0")
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
        *STAGE_2[mode],
        "dynamodb.Query",  # the newest messages (lsi-seq): the unanswered ones and the history before,
        "sqs.SendMessage",  # to the AI queue
        "dynamodb.UpdateItem",  # stage 3: picked up, the lease starts again (fenced: still the holder?)
        "dynamodb.GetItem",  # after the responder: still the holder? newer messages? handed off?
        "dynamodb.UpdateItem",  # the reply noted as `sending` (fenced): never sent twice
        "sqs.SendMessage",  # the reply (to the outbox: no Twilio account here)
        "dynamodb.GetItem",  # the record's last_message_seq: the reply's place
        "dynamodb.TransactWriteItems",  # unlock + the reply's Put
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


def test_a_message_appended_to_a_3000_message_conversation_writes_one_small_item(engine):
    store, stack = engine.runtime.store, engine.stack
    old = history(3000)
    engine.put(conversation(messages=old))
    record_key = {"TableName": stack.refs["ConversationsTable"], "Key": {"conversation_id": {"S": "c1"}}}
    before = item_size(stack.dynamodb.get_item(**record_key)["Item"])
    message = {"message_id": "SMnew", "role": "user", "content": "hallo", "timestamp": "2026-01-02T00:00:00Z"}

    with captured_writes() as writes:
        locked = store.lock_and_append("c1", "b1", [message], now=time.time(), lock_timeout_seconds=300)

    assert locked.status == "acquired" and "messages" not in locked.record
    [(operation, params)] = writes
    assert operation == "TransactWriteItems"
    [update, put] = params["TransactItems"]
    assert set(update) == {"Update"} and set(put) == {"Put"}
    assert item_size(put["Put"]["Item"]) < 1024  # the new message alone
    record = stack.dynamodb.get_item(**record_key)["Item"]
    assert "messages" not in record and record["last_message_seq"] == {"N": "3001"}
    assert before < 1024 and item_size(record) < 1024  # flat: the record never holds the history

    newest = store.messages("c1", last=20)
    assert [m["message_id"] for m in newest] == [m["message_id"] for m in old[-19:]] + ["SMnew"]
    assert newest[-1] == message and newest[0] == old[-19]  # as written: no keys or seq added
    assert store.messages("c1", last=21) == [
        *old[-20:],
        message,
    ]  # (a full 3,000-item read can outlast moto's 5 s under load)

    redelivered = store.lock_and_append("c1", "b2", [old[0]], now=time.time(), lock_timeout_seconds=300)
    assert redelivered.status == "duplicates" and redelivered.duplicates == [old[0]["message_id"]]

    reply = {"message_id": "SMreply", "role": "assistant", "content": "Gern!", "batch_id": "b1"}
    with captured_writes() as writes:
        released = store.release_lock("c1", "b1", status="ai_response_sent", now=time.time(), reply=reply)
    assert released["conversation_status"] == "ai_response_sent" and "lock_owner" not in released
    [(operation, params)] = writes
    # the record, the reply, and the pointer a status callback finds the reply by
    assert operation == "TransactWriteItems" and len(params["TransactItems"]) == 3
    assert store.messages("c1", last=2) == [message, reply]
    assert [r["conversation_id"] for r in store.list()] == ["c1"]
