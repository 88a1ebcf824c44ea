"""What a long conversation costs each message (issue 8), on both backends, side by side in one run.

For each history length H (10, 1,000, 3,000 messages, ~200 characters each, user and assistant
alternating, shaped as `replies_engine.conversation.user_message` and the reply stage write them), one
conversation is created and then, R times, interleaved across the H values so that a noisy moment of
the machine hits all of them alike:

  lookup        stage 1: `store.find_active(WHATSAPP_GSI, company, person)`, which returns whole records
  lock+append   `store.lock_and_append(...)` of one new user message (its `release_lock`, untimed)
  unlock        `store.release_lock(..., status="ai_response_sent", reply=...)` (after an untimed lock)

Median and p90 in ms, and each median as a ratio to the shortest history's: the ratios are the point,
the absolute figures are this machine's (and, for aws, moto's: a Python server on loopback, not
DynamoDB). Each round appends three messages, so a history grows by 3 R during the run.

The bench goes through the ConversationStore port only (put, get, find_active, lock_and_append,
release_lock), so it keeps measuring what the store does if messages move out of the record. A
DynamoDB item holds at most 400 KB, so a record is `put` with the oldest messages that fit in
300 KB of JSON and the rest is appended in chunks through lock_and_append/release_lock, as the
history would grow in production: on aws the store's item budget then moves older messages to
archive items, and the table says how many the record still holds.

"record KiB" is the JSON of `store.get(id)`. For aws, "WCU/msg" estimates what DynamoDB on-demand
would bill to write one message through (its lock+append and its unlock, both UpdateItems), from the
item's size as DynamoDB counts it (attribute names + values; an estimate from the record, not a
measurement: moto's ConsumedCapacity is a constant): ceil(KB) for the table, the same again for each
ALL-projection GSI in template.yaml the item is in, 1 for the sparse lock index on lock and on unlock.
"RCU/msg": stage 1's eventually consistent Query on the GSI (0.5 per 4 KB) and the store's
consistent GetItem before its conditional write (1 per 4 KB).

    .venv/bin/python bench/history.py [--backends sqlite,aws] [--histories 10,1000,3000]
                                      [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import conversation  # noqa: E402
from tests.payloads import COMPANY, PERSON  # noqa: E402

from replies_engine import clock  # noqa: E402
from replies_engine.channels import GSIS, WHATSAPP_GSI  # noqa: E402
from replies_engine.conversation import AI_RESPONSE_SENT, user_message  # noqa: E402
from replies_engine.ports import ConversationStore, Record, StoreError  # noqa: E402

REPEAT = {"sqlite": 30, "aws": 10}
SEED_BYTES = 300_000  # JSON of messages written by put(); the rest is appended (a DynamoDB item is ≤ 400 KB)
CHUNK = 100  # messages per lock_and_append while growing a history
LOCK_TIMEOUT = 300
START = 1_780_000_000.0  # the first message of every history (2026-05-28)

WORDS = (
    "hallo danke termin morgen vielleicht passt uns gut die lieferung kommt wann genau bitte noch "
    "einmal bestätigen wir haben eine frage zur rechnung und zum angebot können sie mir sagen ob das "
    "auch am wochenende geht sonst nächste woche gern per whatsapp oder telefon grüße schöne Zoë "
    "the order arrived yesterday but one item is missing could you check please thanks again"
).split()


# --- the conversations ---------------------------------------------------------------------------


def text(rng: random.Random, length: int = 200) -> str:
    """About `length` characters of chat, a sentence or two."""
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < length:
        words.append(rng.choice(WORDS))
    return " ".join(words)[: length - 1].capitalize() + "."


def history(n: int, person: str, rng: random.Random) -> list[Record]:
    """`n` messages, user and assistant alternating, a minute apart, as the stages store them."""
    messages = []
    for i in range(n):
        at = clock.iso(START + 60 * i)
        batch_id = f"batch-{rng.getrandbits(128):032x}"
        if i % 2 == 0:
            context = {
                "channel_type": "whatsapp",
                "message_sid": f"SM{rng.getrandbits(128):032x}",
                "body": text(rng),
                "from": f"whatsapp:{person}",
                "to": f"whatsapp:{COMPANY}",
                "received_at": at,
            }
            messages.append(user_message(context, batch_id))
        else:
            messages.append(assistant(text(rng), batch_id, at, rng))
    return messages


def assistant(content: str, batch_id: str, at: str, rng: random.Random) -> Record:
    """A reply as the reply stage appends it (replies/pipeline.py)."""
    return {
        "message_id": f"SM{rng.getrandbits(128):032x}",
        "role": "assistant",
        "content": content,
        "timestamp": at,
        "channel_type": "whatsapp",
        "batch_id": batch_id,
    }


def incoming(person: str, rng: random.Random) -> Record:
    context = {
        "channel_type": "whatsapp",
        "message_sid": f"SM{rng.getrandbits(128):032x}",
        "body": text(rng),
        "from": f"whatsapp:{person}",
        "to": f"whatsapp:{COMPANY}",
        "received_at": clock.iso(),
    }
    return user_message(context)


def grow(store: ConversationStore, conversation_id: str, person: str, n: int, rng: random.Random) -> None:
    """Create the conversation with `n` messages through the port: put() what one item can hold, then
    append the rest, CHUNK at a time, with lock_and_append and release_lock."""
    messages = history(n, person, rng)
    seeded, size = 0, 0
    while seeded < n and size + json_size(messages[seeded]) <= SEED_BYTES:
        size += json_size(messages[seeded])
        seeded += 1
    store.put(
        conversation(
            conversation_id,
            gsi_recipient_tel=person,
            created_at=clock.iso(START),
            conversation_status=AI_RESPONSE_SENT,
            messages=messages[:seeded],
        )
    )
    for first in range(seeded, n, CHUNK):
        batch_id = f"batch-{uuid.uuid4().hex}"
        outcome = store.lock_and_append(
            conversation_id,
            batch_id,
            messages[first : first + CHUNK],
            now=clock.now(),
            lock_timeout_seconds=LOCK_TIMEOUT,
        )
        assert outcome.status == "acquired", outcome
        assert store.release_lock(conversation_id, batch_id, status=AI_RESPONSE_SENT, now=clock.now())


# --- sizes and capacity units --------------------------------------------------------------------


def json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, default=str).encode())


def dynamodb_size(value: Any) -> int:
    """Bytes as DynamoDB counts an attribute value: UTF-8 strings, numbers ~1 byte per 2 digits + 1,
    1 for booleans and nulls, 3 + 1 per element for lists and maps (plus the names in a map)."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, int | float | Decimal):
        digits = len(str(abs(value)).replace(".", "").lstrip("0")) or 1
        return math.ceil(digits / 2) + 1
    if isinstance(value, dict):
        return 3 + sum(len(k.encode()) + dynamodb_size(v) + 1 for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return 3 + sum(dynamodb_size(v) + 1 for v in value)
    return len(str(value).encode())


def item_size(record: Record) -> int:
    """The item's size as DynamoDB counts it (top-level names + values)."""
    return sum(len(k.encode()) + dynamodb_size(v) for k, v in record.items())


def all_projection_indexes() -> set[str]:
    from tests.aws import template

    table = template()["Resources"]["ConversationsTable"]["Properties"]
    return {
        index["IndexName"]
        for index in table["GlobalSecondaryIndexes"]
        if index["Projection"]["ProjectionType"] == "ALL"
    }


def capacity(record: Record, full_indexes: set[str]) -> dict[str, float]:
    """Estimated on-demand units to take one message through: lock+append, then unlock with a reply."""
    size = item_size(record)
    reply = item_size({"m": record["messages"][-1]}) if record.get("messages") else 0
    in_indexes = sum(
        1
        for gsi in GSIS
        if gsi.name in full_indexes and record.get(gsi.company_attr) and record.get(gsi.recipient_attr)
    )
    lock = (1 + in_indexes) * math.ceil(size / 1024) + 1  # + the lock index's small entry
    unlock = (1 + in_indexes) * math.ceil((size + reply) / 1024) + 1  # + its removal
    return {
        "item_bytes": size,
        "indexes": in_indexes,
        "wcu_lock_append": lock,
        "wcu_unlock": unlock,
        "wcu_per_message": lock + unlock,
        "rcu_per_message": 0.5 * math.ceil(size / 4096) + math.ceil(size / 4096),
    }


# --- moto ---------------------------------------------------------------------------------------


def fix_moto_item_size() -> None:
    """Make moto check an UpdateItem's resulting item against the 400 KB limit, as DynamoDB does.

    moto 5.2's LimitedSizeDict adds the new value of an attribute to the item's size WITH its old
    value still counted, so `SET messages = list_append(messages, :m)` fails ("Item size to update has
    exceeded the maximum allowed size") once `messages` passes ~200 KB, half of DynamoDB's limit and
    well under the store's 350 KB budget: no history could grow to where the store archives. The
    server runs in this process, so its class is patched here (`--unpatched-moto` shows the failure).
    """
    from moto.dynamodb.exceptions import ItemSizeTooLarge
    from moto.dynamodb.models.dynamo_type import DynamoType, LimitedSizeDict
    from moto.dynamodb.models.utilities import bytesize

    def size(value: Any) -> int:
        return value.size() if type(value) is DynamoType else bytesize(str(value))

    def setitem(self: dict[str, Any], key: str, value: Any) -> None:
        others = sum(size(k) + size(v) for k, v in self.items() if k != key)
        if others + size(key) + size(value) > 405_000:  # moto's own figure for DynamoDB's limit
            raise ItemSizeTooLarge
        dict.__setitem__(self, key, value)

    LimitedSizeDict.__setitem__ = setitem  # type: ignore[method-assign]


# --- the backends --------------------------------------------------------------------------------


class Backend:
    """A store on a fresh database; `close()` removes it."""

    def __init__(self, name: str, fix_moto: bool = True) -> None:
        self.name = name
        self.closers: list[Callable[[], Any]] = []
        if name == "sqlite":
            from replies_engine.adapters.sqlite import Database, SqliteConversationStore

            tmp = tempfile.TemporaryDirectory()
            self.closers.append(tmp.cleanup)
            self.store: ConversationStore = SqliteConversationStore(Database(f"{tmp.name}/history.db"))
        elif name == "aws":
            from tests.aws import Stack, start_moto

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
            if fix_moto:
                fix_moto_item_size()
            server, endpoint = start_moto()
            self.closers.append(server.shutdown)
            stack = Stack(endpoint)
            for variable in [v for v in os.environ if v.startswith("AWS_")]:
                del os.environ[variable]  # a developer's profile or X-Ray daemon must not leak in
            os.environ.update(stack.environment())
            from replies_engine.adapters.aws import DynamoConversationStore

            self.store = DynamoConversationStore(stack.refs["ConversationsTable"])
        else:
            raise SystemExit(f"unknown backend {name!r} (sqlite, aws)")

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


# --- the measurement -----------------------------------------------------------------------------


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1000, result


def bench(backend: Backend, histories: list[int], repeat: int, seed: int) -> list[dict[str, Any]]:
    store = backend.store
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for n, h in enumerate(histories):
        person = f"+49151{n:08d}"
        conversation_id = f"history-{h}"
        started = time.perf_counter()
        try:
            grow(store, conversation_id, person, h, rng)
        except StoreError as exc:
            failed.append({"history": h, "error": str(exc)})
            continue
        record = store.get(conversation_id)
        assert record is not None
        rows.append(
            {
                "history": h,
                "conversation_id": conversation_id,
                "person": person,
                "seed_seconds": time.perf_counter() - started,
                "messages_in_record": len(record["messages"]),
                "record_bytes": json_size(record),
                "lookup_ms": [],
                "lock_append_ms": [],
                "unlock_ms": [],
                "archived_during_timed": 0,
            }
        )
        if backend.name == "aws":
            rows[-1]["capacity"] = capacity(record, all_projection_indexes())

    for round_ in range(repeat):
        shift = round_ % len(rows)
        for row in rows[shift:] + rows[:shift]:  # each history takes each position in turn
            cid = row["conversation_id"]
            ms, found = timed(lambda: store.find_active(WHATSAPP_GSI, COMPANY, row["person"]))  # noqa: B023
            assert [r["conversation_id"] for r in found] == [cid], found
            row["lookup_ms"].append(ms)
            before = len(found[0]["messages"])

            batch_id = f"batch-{uuid.uuid4().hex}"
            message = incoming(row["person"], rng)
            ms, outcome = timed(
                lambda: store.lock_and_append(  # noqa: B023
                    cid,
                    batch_id,
                    [message],
                    now=clock.now(),
                    lock_timeout_seconds=LOCK_TIMEOUT,  # noqa: B023
                )
            )
            assert outcome.status == "acquired", outcome
            row["lock_append_ms"].append(ms)
            if outcome.record is not None and len(outcome.record["messages"]) < before + 1:
                row["archived_during_timed"] += 1
            assert store.release_lock(cid, batch_id, status=AI_RESPONSE_SENT, now=clock.now())

            batch_id = f"batch-{uuid.uuid4().hex}"
            outcome = store.lock_and_append(
                cid,
                batch_id,
                [incoming(row["person"], rng)],
                now=clock.now(),
                lock_timeout_seconds=LOCK_TIMEOUT,
            )
            assert outcome.status == "acquired", outcome
            reply = assistant(text(rng), batch_id, clock.iso(), rng)
            ms, released = timed(
                lambda: store.release_lock(  # noqa: B023
                    cid,
                    batch_id,
                    status=AI_RESPONSE_SENT,
                    now=clock.now(),
                    reply=reply,  # noqa: B023
                )
            )
            assert released is not None
            row["unlock_ms"].append(ms)

    for row in rows:
        record = store.get(row["conversation_id"])
        assert record is not None
        row["messages_in_record_after"] = len(record["messages"])
        row["record_bytes_after"] = json_size(record)
        for key in ("lookup_ms", "lock_append_ms", "unlock_ms"):
            row[key.removesuffix("_ms")] = {"median": median(row[key]), "p90": p90(row[key])}
    return rows + failed


def median(values: list[float]) -> float:
    return statistics.median(values)


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]


# --- output --------------------------------------------------------------------------------------


def print_table(name: str, rows: list[dict[str, Any]], repeat: int, seconds: float) -> None:
    failed = [row for row in rows if "error" in row]
    rows = [row for row in rows if "error" not in row]
    aws = name == "aws"
    if not rows:
        print(f"\n{name}: no history could be built")
    for row in failed:
        print(f"  H={row['history']}: could not be built: {row['error'][:160]}")
    if not rows:
        return
    base = rows[0]
    print(
        f"\n{name}: {repeat} rounds, {seconds:.1f} s; median ms (p90) and, in brackets, median / H={base['history']}'s"
    )
    header = f"{'history':>7} {'in record':>9} {'record KiB':>10} {'lookup ms':>24} {'lock+append ms':>24} {'unlock ms':>24}"
    if aws:
        header += f" {'WCU/msg':>8} {'RCU/msg':>8}"
    print(header)
    for row in rows:
        cells = []
        for key in ("lookup", "lock_append", "unlock"):
            stats = row[key]
            ratio = stats["median"] / base[key]["median"]
            cells.append(f"{stats['median']:7.2f} ({stats['p90']:7.2f}) [{ratio:5.1f}x]")
        line = (
            f"{row['history']:>7} {row['messages_in_record']:>9} {row['record_bytes'] / 1024:10.1f} "
            + " ".join(f"{c:>24}" for c in cells)
        )
        if aws:
            line += f" {row['capacity']['wcu_per_message']:8d} {row['capacity']['rcu_per_message']:8.1f}"
        print(line)
    notes = []
    for row in rows:
        if row["messages_in_record"] < row["history"]:
            notes.append(
                f"H={row['history']}: the record holds the newest {row['messages_in_record']} messages,"
                " the older ones were moved to archive items (item budget)"
            )
        if row["archived_during_timed"]:
            notes.append(
                f"H={row['history']}: {row['archived_during_timed']} of the timed lock+appends moved"
                " messages to an archive item (they are in its p90)"
            )
    if aws:
        notes.append(
            "WCU/RCU: estimates from the item's size as DynamoDB counts it, not measured"
            f" (table + {rows[0]['capacity']['indexes']} ALL-projection GSIs + the lock index)"
        )
    for note in notes:
        print(f"  note: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="sqlite,aws", help="comma-separated: sqlite, aws")
    parser.add_argument("--histories", default="10,1000,3000", help="comma-separated history lengths")
    parser.add_argument("--repeat", type=int, help="rounds per backend (default: 30 sqlite, 10 aws)")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    parser.add_argument(
        "--unpatched-moto", action="store_true", help="keep moto's item-size check (see fix_moto_item_size)"
    )
    args = parser.parse_args()
    histories = [int(h) for h in args.histories.split(",")]
    os.environ.setdefault("LOG_LEVEL", "WARNING")

    results = {}
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        repeat = args.repeat or REPEAT.get(name, 10)
        started = time.perf_counter()
        backend = Backend(name, fix_moto=not args.unpatched_moto)
        try:
            rows = bench(backend, histories, repeat, args.seed)
        finally:
            backend.close()
        seconds = time.perf_counter() - started
        results[name] = {"repeat": repeat, "seconds": seconds, "rows": rows}
        if not args.json:
            print_table(name, rows, repeat, seconds)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
