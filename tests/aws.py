"""The AWS backend under test: moto in server mode (real boto3 over HTTP on loopback), with the tables,
the queues and the functions' environment built from template.yaml itself."""

from __future__ import annotations

import copy
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import yaml

TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"
REGION = "us-east-1"
ACCOUNT = "123456789012"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags: `!Ref X` → {"Ref": "X"}, `!GetAtt A.B` → {"Fn::GetAtt": …}."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _tag)


def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)


def translate(document: dict[str, Any]) -> dict[str, Any]:
    """What `sam deploy` hands CloudFormation (samtranslator, offline; code as `sam package` leaves it)."""
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:
        def load(self) -> dict:
            return {}

    document = copy.deepcopy(document)
    document["Globals"]["Function"]["CodeUri"] = "s3://bucket/replies-engine.zip"
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return transform(document, {}, NoManagedPolicies())


def start_moto() -> tuple[Any, str]:
    """moto's server on a loopback port, DynamoDB requests made atomic.

    DynamoDB applies each conditional write atomically; moto's threaded server does not (measured:
    two threads both won one conditional UpdateItem in 7 of 40 races). So DynamoDB requests pass one
    at a time, as on the real service for one item; SQS stays concurrent, its long polls must not
    block each other.
    """
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    dynamodb = threading.Lock()

    def atomic_dynamodb(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
            with dynamodb:
                return list(app(environ, start_response))
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, atomic_dynamodb, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class Stack:
    """One test's resources, named uniquely: the template's tables and queues on the moto server."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        self.resources = template()["Resources"]
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )
        self.dynamodb = session.client("dynamodb", endpoint_url=endpoint)
        self.sqs = session.client("sqs", endpoint_url=endpoint)
        self.secrets = session.client("secretsmanager", endpoint_url=endpoint)
        self.sns = session.client("sns", endpoint_url=endpoint)
        self.s3 = session.client("s3", endpoint_url=endpoint)
        self.refs: dict[str, str] = {}  # logical id → what !Ref gives (table, bucket name, queue URL)
        self.queue_names: dict[str, str] = {}  # logical id → queue name
        self._create()

    def _create(self) -> None:
        tables = {k: v for k, v in self.resources.items() if v["Type"] == "AWS::DynamoDB::Table"}
        for logical_id, resource in tables.items():
            table = resource["Properties"]
            name = (
                f"{self.prefix}-{logical_id.removesuffix('Table').lower()}"  # t…-conversations, t…-messages
            )
            indexes = {k: table[k] for k in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes") if k in table}
            self.dynamodb.create_table(
                TableName=name,
                BillingMode=table["BillingMode"],
                AttributeDefinitions=table["AttributeDefinitions"],
                KeySchema=table["KeySchema"],
                **indexes,
            )
            self.refs[logical_id] = name
        for logical_id, resource in self.resources.items():
            if resource["Type"] == "AWS::SNS::Topic":
                topic = f"{self.prefix}-{logical_id}"
                self.refs[logical_id] = self.sns.create_topic(Name=topic)["TopicArn"]
            if resource["Type"] == "AWS::S3::Bucket":
                self.refs[logical_id] = f"{self.prefix}-{logical_id.lower()}"
                self.s3.create_bucket(Bucket=self.refs[logical_id])
        queues = {k: v for k, v in self.resources.items() if v["Type"] == "AWS::SQS::Queue"}
        # dead-letter queues first: the others name them in their redrive policy
        for logical_id in sorted(queues, key=lambda k: "RedrivePolicy" in queues[k].get("Properties", {})):
            properties = dict(queues[logical_id].get("Properties", {}))
            attributes = {
                k: str(v)
                for k, v in properties.items()
                if k in ("VisibilityTimeout", "MessageRetentionPeriod")
            }
            if "RedrivePolicy" in properties:
                policy = properties["RedrivePolicy"]
                dlq = policy["deadLetterTargetArn"]["Fn::GetAtt"].split(".")[0]
                arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{self.queue_names[dlq]}"
                attributes["RedrivePolicy"] = json.dumps(
                    {"deadLetterTargetArn": arn, "maxReceiveCount": policy["maxReceiveCount"]}
                )
            self.queue_names[logical_id] = f"{self.prefix}-{logical_id}"
            self.refs[logical_id] = self.sqs.create_queue(
                QueueName=self.queue_names[logical_id], Attributes=attributes
            )["QueueUrl"]

    def environment(self) -> dict[str, str]:
        """The functions' environment as template.yaml's Globals write it, refs resolved to this stack."""
        variables = template()["Globals"]["Function"]["Environment"]["Variables"]
        env = {}
        for name, value in variables.items():
            if isinstance(value, dict) and "Ref" in value:
                env[name] = self.refs.get(value["Ref"], "")
            elif isinstance(value, str):
                env[name] = value
        env.pop("TWILIO_SECRET_NAME", None)  # tests give TWILIO_AUTH_TOKEN, or create the secret
        env["AWS_ENDPOINT_URL"] = self.endpoint
        return {**CREDENTIALS, **env}

    def queue_url(self, name: str) -> str:
        """`whatsapp` → the URL of WhatsappQueue; `whatsapp-dlq` → WhatsappDLQ's."""
        base = name.removesuffix("-dlq")
        return self.refs[base.capitalize() + ("DLQ" if name.endswith("-dlq") else "Queue")]

    def messages(self, name: str) -> list[Any]:
        """The messages moto holds in a queue, delayed and in flight included (SQS cannot show them)."""
        from moto.sqs.models import sqs_backends

        queue_name = self.queue_url(name).rsplit("/", 1)[1]
        return list(sqs_backends[ACCOUNT][REGION].queues[queue_name]._messages)

    def peek(self, name: str) -> list[dict[str, Any]]:
        peeked = []
        for message in self.messages(name):
            attributes = {}
            for key, attribute in message.message_attributes.items():
                value = attribute.get("string_value", attribute.get("StringValue"))
                data_type = attribute.get("data_type", attribute.get("DataType", "String"))
                attributes[key] = int(value) if data_type.startswith("Number") else value
            sent_ms = int(message.sent_timestamp or time.time() * 1000)
            delay = max(0.0, (message.delayed_until - sent_ms) / 1000) if message.delayed_until else 0.0
            peeked.append({"body": json.loads(message.body), "attributes": attributes, "delay": round(delay)})
        return peeked


def item_size(item: dict[str, Any]) -> int:
    """Bytes DynamoDB counts for an item in its wire format ({"name": {"S": …}}), by its documented rules:
    names and strings as UTF-8, a number (significant digits + 1) / 2 + 1, null and bool 1, a list or
    map 3 plus 1 per element."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(value: dict[str, Any]) -> int:
    ((kind, data),) = value.items()
    if kind == "S":
        return len(data.encode())
    if kind == "N":
        digits = data.lstrip("-").replace(".", "").strip("0") or "0"
        return (len(digits) + 1) // 2 + 1
    if kind in ("NULL", "BOOL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + _value_size(v) for v in data)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _value_size(v) for k, v in data.items())
    if kind in ("SS", "NS", "BS"):
        return sum(_value_size({kind[0]: v}) for v in data)
    return len(data)  # B


def write_units(size: int, transactional: bool = False) -> int:
    """What DynamoDB bills to write an item of `size` bytes: 1 WCU per KB begun, twice in a transaction."""
    return (2 if transactional else 1) * max(1, -(-size // 1024))


def history(n: int) -> list[dict[str, Any]]:
    """`n` messages as stage 2 and 3 write them (about 300 bytes each), oldest first."""
    return [
        {
            "message_id": f"SM{i:032x}",
            "role": "user" if i % 2 else "assistant",
            "content": f"message {i}: die lieferung kommt wann genau, bitte noch einmal bestätigen",
            "timestamp": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}.000000Z",
            "channel_type": "whatsapp",
            "batch_id": f"batch-{i:032x}",
            "from": "whatsapp:+4915112345678",
            "to": "whatsapp:+14155238886",
        }
        for i in range(n)
    ]


@contextmanager
def captured_writes() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """The params of every DynamoDB write our code makes meanwhile, as (operation, params)."""
    from replies_engine.adapters.aws.clients import client

    seen: list[tuple[str, dict[str, Any]]] = []

    def record(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
        if model.name in ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"):
            seen.append((model.name, params))

    events = client("dynamodb").meta.events
    events.register("before-parameter-build.dynamodb", record)
    try:
        yield seen
    finally:
        events.unregister("before-parameter-build.dynamodb", record)


class Body:
    """A canned HTTP body for a botocore `AWSResponse` (fault injection in the tests)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self.data


def billed_write_units(stack: Stack, conversation_id: str, operation: Any) -> tuple[Any, int]:
    """(`operation()`, the table write units DynamoDB would bill for it: moto reports none). From the
    items written: an UpdateItem bills the larger of the record before and after, a transaction twice
    each of its items."""
    key = {"TableName": stack.refs["ConversationsTable"], "Key": {"conversation_id": {"S": conversation_id}}}
    before = item_size(stack.dynamodb.get_item(**key)["Item"])
    with captured_writes() as writes:
        result = operation()
    record = max(before, item_size(stack.dynamodb.get_item(**key)["Item"]))
    units = 0
    for name, params in writes:
        transactional = name == "TransactWriteItems"
        for entry in params["TransactItems"] if transactional else [{"Update": params}]:
            [(kind, body)] = entry.items()
            size = item_size(body["Item"]) if kind == "Put" else record if kind == "Update" else 0
            units += write_units(size, transactional)
    return result, units
