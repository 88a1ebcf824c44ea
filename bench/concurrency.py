"""Many people at once, on the wall clock, through a live `replies-engine serve` on loopback.

N conversations each post a burst of 1 to 3 signed WhatsApp messages at the same moment (or --gap
seconds apart, as people type); the engine runs its defaults (debounce, QUIET_SECONDS=3) with the
simulated AI taking --ai seconds. For each N it prints the time from a person's last message to their
reply (p50, max) against the ideal of quiet + AI, replies per burst, the AI's calls and tokens per burst
(those of calls cancelled or superseded included, as the replies record them), and messages lost or
appended twice. The last row runs the old shape, one reply at a time (REPLY_CONCURRENCY=1), side by side
in the same run; --speculate adds a SPECULATE=on row for each N, side by side too. With --openai the AI
is an OpenAI-compatible server on loopback (`tests.fakes.StreamingModel`) that streams its answer over
--ai seconds, and the last column counts the requests it had and those the engine closed early.

    .venv/bin/python bench/concurrency.py [--people 1 10 50 200] [--ai 2] [--gap 0] [--baseline 10]
        [--speculate] [--openai]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx2 as httpx  # noqa: E402
from tests.conftest import conversation  # noqa: E402
from tests.fakes import StreamingModel  # noqa: E402
from tests.payloads import TOKEN, sign, whatsapp_text  # noqa: E402
from tests.processes import cli, serving  # noqa: E402

from replies_engine import clock  # noqa: E402
from replies_engine.adapters.sqlite import Database, SqliteConversationStore, SqliteOutbox  # noqa: E402

QUIET = 3


def person(n: int) -> str:
    return f"+4915100{n:05d}"


def environment(
    db: str, ai_seconds: float, reply_concurrency: int | None, speculate: bool, model_url: str | None
) -> dict[str, str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("REPLIES_", "TWILIO_"))},
        "REPLIES_SQLITE_PATH": db,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "LOG_LEVEL": "WARNING",
        "QUIET_SECONDS": str(QUIET),
        "LOCAL_RESPONDER_DELAY_SECONDS": str(ai_seconds),
    }
    if reply_concurrency:
        env["REPLY_CONCURRENCY"] = str(reply_concurrency)
    if speculate:
        env["SPECULATE"] = "on"
    if model_url:
        env.update(RESPONDER="openai", OPENAI_BASE_URL=f"{model_url}/v1", OPENAI_API_KEY="sk-bench")
    return env


def run(
    people: int,
    ai_seconds: float,
    reply_concurrency: int | None,
    seed: int,
    speculate: bool = False,
    gap: float = 0,
    openai: bool = False,
) -> dict[str, float]:
    rng = random.Random(seed)
    model = StreamingModel(ai_seconds) if openai else None
    with tempfile.TemporaryDirectory() as tmp:
        env = environment(f"{tmp}/bench.db", ai_seconds, reply_concurrency, speculate, model and model.url)
        records = [conversation(f"p{n}", gsi_recipient_tel=person(n)) for n in range(people)]
        cli(env, "conversations", "import", "-", stdin=json.dumps(records))
        bursts = {
            n: [
                whatsapp_text(f"message {i} from {n}", From=f"whatsapp:{person(n)}", WaId=person(n)[1:])
                for i in range(rng.randint(1, 3))
            ]
            for n in range(people)
        }
        with serving(env) as (url, _), httpx.Client(limits=httpx.Limits(max_connections=32)) as http:

            def post_burst(n: int) -> tuple[int, float, int]:
                accepted = 0
                for i, params in enumerate(bursts[n]):
                    if i and gap:
                        time.sleep(gap)  # typing the next one
                    response = http.post(
                        f"{url}/whatsapp",
                        content=urlencode(params),
                        headers={
                            "Content-Type": "application/x-www-form-urlencoded",
                            "X-Twilio-Signature": sign(f"{url}/whatsapp", params),
                        },
                    )
                    accepted += response.status_code == 200
                return n, clock.now(), accepted

            with ThreadPoolExecutor(32 if not gap else people) as pool:
                posted = {n: (last, accepted) for n, last, accepted in pool.map(post_burst, range(people))}
            outbox = SqliteOutbox(Database(env["REPLIES_SQLITE_PATH"]))
            deadline = time.monotonic() + 60 + people * ai_seconds / (reply_concurrency or 64) * 3
            while len({r["conversation_id"] for r in outbox.list()}) < people and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)  # a second reply, were there one, would show now
            replies = outbox.list()
        store = SqliteConversationStore(Database(env["REPLIES_SQLITE_PATH"]))
        waits, lost, twice, calls, tokens = [], 0, 0, 0, 0
        for n in range(people):
            record, stored = store.get(f"p{n}"), store.messages(f"p{n}")
            kept = [m["message_id"] for m in [*stored, *record.get("pending_messages", [])]]
            for reply in (
                m for m in stored if m["role"] == "assistant" and m.get("answers")
            ):  # not the outreach
                discarded = reply.get("discarded_usage") or {}
                calls += 1 + discarded.get("calls", 0)
                tokens += (reply.get("usage") or {}).get("total_tokens", 0) + discarded.get("total_tokens", 0)
            sids = [p["MessageSid"] for p in bursts[n]]
            lost += sum(sid not in kept for sid in sids)
            twice += sum(kept.count(sid) > 1 for sid in sids)
            mine = [r for r in replies if r["conversation_id"] == f"p{n}"]
            if mine:
                waits.append(clock.parse_iso(mine[0]["created_at"]) - posted[n][0])
    ideal = QUIET + ai_seconds
    if model:
        model.close()
    return {
        "model_asked": model.requests if model else None,
        "model_closed": model.closed if model else None,
        "people": people,
        "messages": sum(len(b) for b in bursts.values()),
        "accepted": sum(a for _, a in posted.values()),
        "answered": len(waits),
        "p50_s": statistics.median(waits) if waits else float("nan"),
        "max_s": max(waits) if waits else float("nan"),
        "x_ideal": (max(waits) / ideal) if waits else float("nan"),
        "replies_per_burst": len(replies) / people,
        "calls_per_burst": calls / people,
        "tokens_per_burst": tokens / people,
        "lost": lost,
        "duplicated": twice,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, nargs="+", default=[1, 10, 50, 200])
    parser.add_argument("--ai", type=float, default=2.0, help="the simulated AI's seconds per reply")
    parser.add_argument("--gap", type=float, default=0, help="seconds between a burst's messages")
    parser.add_argument("--baseline", type=int, default=10, help="people for the one-at-a-time row (0: none)")
    parser.add_argument("--reply-concurrency", type=int, help="REPLY_CONCURRENCY for the default rows")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--speculate", action="store_true", help="a SPECULATE=on row beside each default one")
    parser.add_argument("--openai", action="store_true", help="the AI: a streaming model server on loopback")
    args = parser.parse_args()
    options = {"gap": args.gap, "openai": args.openai}

    name = f"REPLY_CONCURRENCY={args.reply_concurrency}" if args.reply_concurrency else "default"
    rows = []
    for n in args.people:
        rows.append((name, run(n, args.ai, args.reply_concurrency, args.seed, **options)))
        if args.speculate:
            speculating = run(n, args.ai, args.reply_concurrency, args.seed, speculate=True, **options)
            rows.append(("SPECULATE=on", speculating))
    if args.baseline:
        rows.append(("REPLY_CONCURRENCY=1", run(args.baseline, args.ai, 1, args.seed, **options)))
    if args.json:
        print(json.dumps([{"engine": name, **row} for name, row in rows], indent=2))
        return
    print(
        f"ideal = quiet {QUIET} s + AI {args.ai:g} s = {QUIET + args.ai:g} s; messages {args.gap:g} s apart"
    )
    print(
        f"{'engine':<20} {'people':>6} {'msgs':>5} {'answered':>8} {'p50 s':>6} {'max s':>6} "
        f"{'× ideal':>7} {'replies/burst':>13} {'calls/burst':>11} {'tokens/burst':>12} {'lost':>4} {'twice':>5}"
        f"{' model asked/closed' if args.openai else ''}"
    )
    for name, r in rows:
        print(
            f"{name:<20} {r['people']:>6} {r['messages']:>5} {r['answered']:>8} {r['p50_s']:>6.1f} "
            f"{r['max_s']:>6.1f} {r['x_ideal']:>7.2f} {r['replies_per_burst']:>13.2f} "
            f"{r['calls_per_burst']:>11.2f} {r['tokens_per_burst']:>12.0f} {r['lost']:>4} {r['duplicated']:>5}"
            + (f" {r['model_asked']:>11}/{r['model_closed']}" if args.openai else "")
        )


if __name__ == "__main__":
    main()
