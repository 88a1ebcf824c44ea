"""What a long conversation costs each message, on both backends, side by side in one run.

For each history length H (10, 1,000, 3,000 messages of ~200 characters, user and assistant
alternating), one conversation is `put`, then R rounds, interleaved across the H values so that a
noisy moment of the machine hits all of them alike, time through the ConversationStore port:

  lookup        stage 1: `find_active` on the WhatsApp GSI
  lock+append   stage 2: `lock_and_append` of one new message
  unlock        stage 3: `release_lock` with the reply

Medians in ms, and each as a multiple of the shortest history's: the multiples are the point, the
absolute figures are this machine's (and on aws moto's, a Python server on loopback, not DynamoDB's).
On aws, "WCU/msg" is what DynamoDB on demand would bill the table for one message's lock+append and
unlock, from the items written (moto reports no capacity): 1 per KB begun, 2 per KB in a transaction.

    .venv/bin/python bench/history.py [--backends sqlite,aws] [--histories 10,1000,3000] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import conversation  # noqa: E402
from tests.payloads import COMPANY  # noqa: E402

from replies_engine import clock  # noqa: E402
from replies_engine.channels import WHATSAPP_GSI  # noqa: E402
from replies_engine.conversation import AI_RESPONSE_SENT  # noqa: E402

REPEAT = {"sqlite": 30, "aws": 10}
CONTENT = "Die Lieferung kommt wann genau? Bitte noch einmal bestätigen, ob das am Wochenende geht. " * 2


def message(role: str, batch_id: str, person: str) -> dict[str, Any]:
    return {
        "message_id": f"SM{uuid.uuid4().hex}",
        "role": role,
        "content": CONTENT[:200],
        "timestamp": clock.iso(),
        "channel_type": "whatsapp",
        "batch_id": batch_id,
        "from": f"whatsapp:{person}",
        "to": f"whatsapp:{COMPANY}",
    }


def history(n: int, person: str) -> list[dict[str, Any]]:
    return [message("user" if i % 2 else "assistant", f"batch-{i // 2}", person) for i in range(n)]


class Backend:
    """A store on a fresh database or moto stack; `billed(operation)` the aws table's write units."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closers: list[Callable[[], Any]] = []
        if name == "sqlite":
            from replies_engine.adapters.sqlite import Database, SqliteConversationStore

            tmp = tempfile.TemporaryDirectory()
            self.closers.append(tmp.cleanup)
            self.store = SqliteConversationStore(Database(f"{tmp.name}/history.db"))
            return
        from tests.aws import Stack, start_moto

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server, endpoint = start_moto()
        self.closers.append(server.shutdown)
        self.stack = Stack(endpoint)
        for variable in [v for v in os.environ if v.startswith("AWS_")]:
            del os.environ[variable]  # a developer's profile or X-Ray daemon must not leak in
        os.environ.update(self.stack.environment())
        from replies_engine.adapters.aws import DynamoConversationStore

        self.store = DynamoConversationStore(
            self.stack.refs["ConversationsTable"], self.stack.refs["MessagesTable"]
        )

    def billed(self, conversation_id: str, operation: Callable[[], Any]) -> tuple[float, Any, int]:
        """(ms, `operation()`, the write units DynamoDB would bill the tables for it)."""
        if self.name != "aws":
            return (*timed(operation), 0)
        from tests.aws import billed_write_units

        (ms, result), units = billed_write_units(self.stack, conversation_id, partial(timed, operation))
        return ms, result, units

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1000, result


def bench(backend: Backend, histories: list[int], repeat: int) -> list[dict[str, Any]]:
    store = backend.store
    rows = []
    for n, length in enumerate(histories):
        person, conversation_id = f"+49151{n:08d}", f"history-{length}"
        store.put(conversation(conversation_id, gsi_recipient_tel=person, messages=history(length, person)))
        rows.append(
            {
                "history": length,
                "id": conversation_id,
                "person": person,
                "lookup": [],
                "lock": [],
                "unlock": [],
                "wcu": [],
            }
        )
    for round_ in range(repeat):
        shift = round_ % len(rows)
        for row in rows[shift:] + rows[:shift]:  # each history takes each place in the round in turn
            cid, person, batch_id = row["id"], row["person"], f"batch-{uuid.uuid4().hex}"
            ms, found = timed(partial(store.find_active, WHATSAPP_GSI, COMPANY, person))
            assert [r["conversation_id"] for r in found] == [cid]
            row["lookup"].append(ms)
            new, reply = message("user", batch_id, person), message("assistant", batch_id, person)
            lock = partial(
                store.lock_and_append, cid, batch_id, [new], now=clock.now(), lock_timeout_seconds=300
            )
            ms, outcome, locking = backend.billed(cid, lock)
            assert outcome.status == "acquired", outcome
            row["lock"].append(ms)
            unlock = partial(
                store.release_lock, cid, batch_id, status=AI_RESPONSE_SENT, now=clock.now(), reply=reply
            )
            ms, released, unlocking = backend.billed(cid, unlock)
            assert released is not None
            row["unlock"].append(ms)
            row["wcu"].append(locking + unlocking)
    for row in rows:
        row["record_kib"] = len(json.dumps(store.get(row["id"]))) / 1024
        row["messages"] = len(store.messages(row["id"]))
        for key in ("lookup", "lock", "unlock"):
            row[key] = statistics.median(row[key])
        row["wcu"] = max(row["wcu"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="sqlite,aws")
    parser.add_argument("--histories", default="10,1000,3000")
    parser.add_argument("--repeat", type=int, help="rounds (default: 30 sqlite, 10 aws)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    histories = [int(h) for h in args.histories.split(",")]
    results = {}
    for name in args.backends.split(","):
        backend = Backend(name)
        try:
            results[name] = bench(backend, histories, args.repeat or REPEAT[name])
        finally:
            backend.close()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, rows in results.items():
        base = rows[0]
        print(f"\n{name}: median ms [× history {base['history']}]")
        print(
            f"{'history':>7} {'record KiB':>10} {'lookup':>16} {'lock+append':>16} {'unlock':>16} {'WCU/msg':>8}"
        )
        for row in rows:
            cells = [f"{row[k]:7.2f} [{row[k] / base[k]:4.2f}×]" for k in ("lookup", "lock", "unlock")]
            wcu = f"{row['wcu']:8d}" if name == "aws" else f"{'-':>8}"
            print(
                f"{row['history']:>7} {row['record_kib']:10.1f} {' '.join(f'{c:>16}' for c in cells)} {wcu}"
            )


if __name__ == "__main__":
    main()
