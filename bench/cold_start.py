"""Lambda cold start, measured side by side in one run, each number the best of N fresh interpreters.

import     `import <module>` of each entry point's stage, next to `import boto3` (python -X importtime)
1st call   that entry point's first invocation on the AWS backend (moto on loopback): what a cold
           container pays after the import: settings, boto3, clients, the first requests
2nd call   the next invocation in the same container, with an event of its own

Each call does its stage's real work: stage 1 queues a signed WhatsApp message; stage 2 takes one
person's message (debounce: into pending_messages, its flush token sent); stage 3 answers a conversation
its batch holds the lock of (the local responder, the outbox, the unlock); the sweeper looks for
expired locks; the notifier publishes a hand-off's notice to the topic; the inbox lists the
conversations for an operator's bearer token.

  .venv/bin/python bench/cold_start.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.aws import Stack, start_moto  # noqa: E402
from tests.conftest import conversation  # noqa: E402
from tests.payloads import api_event, sid, twilio_event, whatsapp_text  # noqa: E402

from replies_engine import clock, operators  # noqa: E402

STAGES = {
    "webhook_handler": "replies_engine.webhook.pipeline",
    "batch_processor": "replies_engine.batching.processor",
    "reply_sender": "replies_engine.replies.pipeline",
    "stalled_sweeper": "replies_engine.sweeper",
    "handoff_notifier": "replies_engine.notices",
    "operator_handler": "replies_engine.inbox.app",
}

# A child process: import the handler, call it twice, print the times.
CHILD = """
import json, sys, time
started = time.perf_counter()
from replies_engine import handlers
handler = getattr(handlers, sys.argv[1])
imported = time.perf_counter()
first_event, second_event = json.loads(sys.argv[2])
handler(first_event, None)
first = time.perf_counter()
answer = handler(second_event, None)
second = time.perf_counter()
print(json.dumps({"first": first - imported, "second": second - first, "answer": answer}, default=str))
"""


def import_ms(module: str) -> float:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stderr.strip().splitlines()[-1].split("|")[1]) / 1000


def sqs(body: dict) -> dict:
    return {"Records": [{"messageId": sid("rec-"), "receiptHandle": sid("rh-"), "body": json.dumps(body)}]}


def events(name: str, store) -> list[dict]:
    """Two events for the entry point `name`, each with work to do (made afresh for each run): for stage
    3, two conversations locked by the batches whose contexts it gets."""
    now = clock.iso()
    if name == "webhook_handler":
        return [twilio_event("whatsapp", whatsapp_text()) for _ in range(2)]
    if name == "batch_processor":
        store.put(conversation("c3"))
        envelope = {"schema_version": 2, "kind": "message", "conversation_id": "c3", "channel_type": "whatsapp",
                    "from": "whatsapp:+4915112345678", "to": "whatsapp:+14155238886", "body": "hello"}  # fmt: skip
        return [sqs({**envelope, "message_sid": sid(), "received_at": now}) for _ in range(2)]
    if name == "reply_sender":
        contexts = []
        for conversation_id in ("c1", "c2"):
            batch = sid("batch-")
            store.put(conversation(conversation_id, conversation_status="processing_reply", lock_owner=batch,
                                   processing_started_at=now))  # fmt: skip
            message = {"message_id": sid(), "role": "user", "content": "Can we meet on Friday?", "timestamp": now,
                       "channel_type": "whatsapp", "from": "whatsapp:+4915112345678", "to": "whatsapp:+14155238886"}  # fmt: skip
            contexts.append(sqs({"conversation_id": conversation_id, "batch_id": batch, "channel_type": "whatsapp",
                                 "messages": [message], "history": [], "conversation": {},
                                 "reply_address": {"from": message["to"], "to": message["from"]}}))  # fmt: skip
        return contexts
    if name == "handoff_notifier":
        notice = {"kind": "handoff", "conversation_id": "c1", "handoff_reason": "a refund", "by": "ai"}
        return [sqs(notice) for _ in range(2)]
    if name == "operator_handler":
        token = operators.add(Store(store), f"op{uuid.uuid4().hex[:12]}")["token"]
        request = api_event("/api/conversations", None, {"Authorization": f"Bearer {token}"}, method="GET")
        return [request, request]
    return [{"source": "aws.events"}] * 2


class Store:
    """What `operators.add` needs of a runtime: the operators' store."""

    def __init__(self, store) -> None:
        from replies_engine.adapters.aws.operators import DynamoOperators

        self.operators = DynamoOperators(os.environ["OPERATORS_TABLE"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    server, endpoint = start_moto()
    stack = Stack(endpoint)
    env = {
        **os.environ,
        **stack.environment(),
        "TWILIO_AUTH_TOKEN": "0123456789abcdef0123456789abcdef",
        "PUBLIC_BASE_URL": "https://hooks.example.com/prod",
        "LOG_LEVEL": "ERROR",
    }
    os.environ.update(env)
    from replies_engine.adapters.aws import DynamoConversationStore

    store = DynamoConversationStore(stack.refs["ConversationsTable"], stack.refs["MessagesTable"])
    store.put(conversation())

    boto3 = min(import_ms("boto3") for _ in range(args.runs))
    print(f"{'entry point':<18} {'import ms':>10} {'vs boto3':>9} {'1st call ms':>12} {'2nd call ms':>12}")
    print(f"{'(import boto3)':<18} {boto3:10.0f} {1:9.2f}")
    for name, module in STAGES.items():
        imported = min(import_ms(module) for _ in range(args.runs))
        calls = []
        for _ in range(args.runs):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, name, json.dumps(events(name, store))],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            calls.append(json.loads(out.stdout.strip().splitlines()[-1]))
        first = min(c["first"] for c in calls) * 1000
        second = min(c["second"] for c in calls) * 1000
        print(f"{name:<18} {imported:10.0f} {imported / boto3:9.2f} {first:12.0f} {second:12.0f}")
        if (
            name == "reply_sender"
            and (status := store.get("c2")["conversation_status"]) != "ai_response_sent"
        ):
            sys.exit(f"stage 3 did not answer the conversation it was given: {status}")  # the work timed
        answered = calls[-1]["answer"]
        if answered.get("statusCode", 200) != 200 or answered.get("batchItemFailures"):
            sys.exit(f"{name} did not do its work: {answered}")
    server.shutdown()


if __name__ == "__main__":
    main()
