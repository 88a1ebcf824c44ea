"""Lambda cold start, measured side by side in one run, each number the best of N fresh interpreters.

import     `import <module>` of each entry point's stage, next to `import boto3` (python -X importtime)
1st call   that entry point's first invocation on the AWS backend (moto on loopback): what a cold
           container pays after the import: settings, boto3, clients, the first requests
2nd call   the next invocation in the same container

  .venv/bin/python bench/cold_start.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.aws import Stack, start_moto  # noqa: E402
from tests.conftest import conversation  # noqa: E402

STAGES = {
    "webhook_handler": "replies_engine.webhook.pipeline",
    "batch_processor": "replies_engine.batching.processor",
    "reply_sender": "replies_engine.replies.pipeline",
    "stalled_sweeper": "replies_engine.sweeper",
}

# A child process: import the handler, call it twice, print the times.
CHILD = """
import json, sys, time
started = time.perf_counter()
from replies_engine import handlers
handler = getattr(handlers, sys.argv[1])
imported = time.perf_counter()
event = json.loads(sys.argv[2])
handler(event, None)
first = time.perf_counter()
handler(event, None)
second = time.perf_counter()
print(json.dumps({"first": first - imported, "second": second - first}))
"""


def import_ms(module: str) -> float:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stderr.strip().splitlines()[-1].split("|")[1]) / 1000


def events() -> dict[str, dict]:
    from tests.payloads import twilio_event, whatsapp_text

    return {
        "webhook_handler": twilio_event("whatsapp", whatsapp_text()),
        "batch_processor": {"Records": []},
        "reply_sender": {"Records": []},
        "stalled_sweeper": {"source": "aws.events"},
    }


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

    DynamoConversationStore(stack.refs["ConversationsTable"], stack.refs["MessagesTable"]).put(conversation())

    boto3 = min(import_ms("boto3") for _ in range(args.runs))
    print(f"{'entry point':<18} {'import ms':>10} {'vs boto3':>9} {'1st call ms':>12} {'2nd call ms':>12}")
    print(f"{'(import boto3)':<18} {boto3:10.0f} {1:9.2f}")
    for name, module in STAGES.items():
        imported = min(import_ms(module) for _ in range(args.runs))
        calls = []
        for _ in range(args.runs):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, name, json.dumps(events()[name])],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            calls.append(json.loads(out.stdout.strip().splitlines()[-1]))
        first = min(c["first"] for c in calls) * 1000
        second = min(c["second"] for c in calls) * 1000
        print(f"{name:<18} {imported:10.0f} {imported / boto3:9.2f} {first:12.0f} {second:12.0f}")
    server.shutdown()


if __name__ == "__main__":
    main()
