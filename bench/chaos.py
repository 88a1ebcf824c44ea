"""Every accepted message answered, through crashes: seeded runs on both backends, counted.

A run: a few people write bursts to their conversations (the default debounce mode, a 1 s lease),
while the engine is killed one to three times at a seeded point: before or after one of its store or
queue calls (SQLite, or DynamoDB and SQS on moto; over the seeds the first kill walks every one of
the first 50 calls, before and after), or, with --serve, a live `replies-engine serve` by SIGKILL. After a kill the engine starts again (a new runtime; SQS and the embedded queue hand
back what was in flight after its visibility timeout; the sweeper recovers expired leases), and the
run goes on until nothing changes. Then it counts, over all runs:

  lost        accepted messages not in their conversation exactly once (nor in a DLQ)
  unanswered  conversations with a message of the person's after their last reply
  double      messages answered by two replies that both saw them
  locked      conversations left locked
  dead        messages dead-lettered for an operator (not lost, not answered)
  in doubt    replies recorded as sent when their holder died while sending: never sent twice,
  never sent  and of those, the ones that had not gone out (the person got no reply: the price of
              at most once, since Twilio's API cannot make a send idempotent)

    .venv/bin/python bench/chaos.py [--runs 200] [--backends sqlite,aws] [--seed 1] [--serve 0] [--speculate]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import conversation  # noqa: E402
from tests.payloads import TOKEN, twilio_event, whatsapp_text  # noqa: E402

from replies_engine.bootstrap import get_runtime, reset_runtime  # noqa: E402
from replies_engine.handlers import batch_processor, reply_sender, stalled_sweeper, webhook_handler  # noqa: E402
from replies_engine.local.workers import QueueWorker  # noqa: E402
from replies_engine.replies import pipeline  # noqa: E402

PEOPLE = 3
LEASE = 1
SERVE_AI_SECONDS = 0.5  # the live serve's AI; --speculate: 1.5, so that messages come while it thinks
CRASH_POINTS = 50  # a run makes some 100 store and queue calls; its first 50 are where batches start
STORE_CALLS = ("get", "find_active", "messages", "lock_and_append", "add_pending", "flush_pending",
               "renew_lock", "release_lock", "emergency_unlock", "reset_stalled", "list_locked")  # fmt: skip
QUEUE_CALLS = ("send", "send_batch", "receive", "delete", "change_visibility")
ENV = {
    "LOG_LEVEL": "ERROR",
    "TWILIO_AUTH_TOKEN": TOKEN,
    "VERIFY_SIGNATURES": "off",
    "LOCK_TIMEOUT_SECONDS": str(LEASE),
    "QUIET_SECONDS": "0",
    "BATCH_WINDOW_SECONDS": "0",
    "REPLIES_VISIBILITY_TIMEOUT_SECONDS": "1",
    "MAX_RETRY_ATTEMPTS": "20",
}


class Killed(BaseException):
    """The engine dies here: no handler catches it, nothing after it runs."""


def person(n: int) -> str:
    return f"+4915100000{n:03d}"


def message(n: int, i: int) -> dict[str, str]:
    return whatsapp_text(f"m{i} from {n}", From=f"whatsapp:{person(n)}", WaId=person(n)[1:])


class Crash:
    """Kills the engine once, before or after its `at`-th store or queue call (this thread's only:
    a real crash stops every thread, a simulated one would leave the others running)."""

    def __init__(self, at: int, after: bool) -> None:
        self.at = at
        self.after = after  # after the call: its write happened, its answer is lost
        self.calls = 0
        self.main = threading.current_thread()

    def arm(self, runtime: Any) -> None:
        for target, names in ((runtime.store, STORE_CALLS), (runtime.queue, QUEUE_CALLS)):
            for name in names:
                setattr(target, name, self._wrap(getattr(target, name)))

    def _wrap(self, call: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not self.main:
                return call(*args, **kwargs)
            self.calls += 1
            number = self.calls  # its own: a call may make others (send → send_batch)
            if number == self.at and not self.after:
                raise Killed
            result = call(*args, **kwargs)
            if number == self.at:
                raise Killed
            return result

        return wrapped


def outbox(stack: Any) -> list[dict[str, Any]]:
    return [m["body"] for m in stack.peek("outbox")] if stack else get_runtime().outbox.list()


def dead_letters(stack: Any) -> int:
    names = ("whatsapp-dlq", "ai-dlq")
    if stack:
        return sum(len(stack.peek(n)) for n in names)
    return sum(len(get_runtime().queue.peek(n)) for n in names)


def verdict(accepted: dict[str, str], stack: Any) -> Counter:
    """Counts over the run's conversations (see the module's docstring)."""
    store, counts = get_runtime().store, Counter()
    sent = Counter((entry.get("batch_id"), entry.get("part", 0)) for entry in outbox(stack))
    for n in range(PEOPLE):
        cid = f"p{n}"
        record, messages = store.get(cid), store.messages(cid)
        ids = [m["message_id"] for m in messages if m["role"] == "user"]
        pending = [m["message_id"] for m in record.get("pending_messages", [])]
        mine = [sid for sid, owner in accepted.items() if owner == cid]
        counts["lost"] += sum((ids + pending).count(sid) != 1 for sid in mine)
        replies = [m for m in messages if m["role"] == "assistant"][1:]  # after the outreach
        last_reply = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
        counts["unanswered"] += bool(pending or any(m["role"] == "user" for m in messages[last_reply + 1 :]))
        answered = Counter(sid for r in replies for sid in r.get("answers", []))
        counts["double"] += sum(1 for times in answered.values() if times > 1)
        counts["double"] += sum(1 for r in replies if sent[r["batch_id"], 0] > 1)  # one reply, sent twice
        doubtful = [r for r in replies if r.get("delivery_status") == "unknown"]
        counts["in doubt"] += len(doubtful)
        counts["never sent"] += sum(1 for r in doubtful if not sent[r["batch_id"], 0])
        counts["locked"] += record["conversation_status"] == "processing_reply"
    counts["dead"] += dead_letters(stack)
    counts["lost"] -= min(counts["lost"], counts["dead"])  # a dead-lettered message is kept, not lost
    return counts


def run_in_process(backend: str, seed: int, stack_factory: Any) -> Counter:
    rng = random.Random(seed)
    tmp = tempfile.TemporaryDirectory()
    stack = stack_factory() if backend == "aws" else None
    for name in [v for v in os.environ if v.startswith(("AWS_", "REPLIES_"))]:
        del os.environ[name]
    os.environ.update(ENV, REPLIES_SQLITE_PATH=f"{tmp.name}/chaos.db")
    if stack:
        # the run's own lease, quiet and timings over the template's (its 300 s lease would outlast the run)
        os.environ.update(stack.environment(), **ENV, REPLIES_BACKEND="aws")
    reset_runtime()
    pipeline.RETRY_BACKOFF_SECONDS = LEASE  # a failed reply's retry, scaled down with the lease
    for n in range(PEOPLE):
        get_runtime().store.put(conversation(f"p{n}", gsi_recipient_tel=person(n)))
    trace = [(n, message(n, i)) for n in range(PEOPLE) for i in range(rng.randint(1, 3))]
    rng.shuffle(trace)
    accepted: dict[str, str] = {}
    crashes, crash, kills = rng.randint(1, 3), None, 0

    # The first kill walks every point in turn as the seeds go (before and after each of the first
    # CRASH_POINTS calls); the later ones fall where the seed says.
    points = iter([(seed // 2 % CRASH_POINTS + 1, seed % 2 == 1)])

    def restart() -> None:
        nonlocal crash, crashes
        reset_runtime()
        crash = Crash(*next(points, (rng.randint(1, CRASH_POINTS), rng.random() < 0.5))) if crashes else None
        crashes -= 1
        if crash:
            crash.arm(get_runtime())

    restart()
    quiet_since, deadline = None, time.monotonic() + 40
    while time.monotonic() < deadline:
        try:
            busy = False
            if trace and rng.random() < 0.5:
                n, params = trace[0]  # a retry after a crash sends the same message again
                if webhook_handler(twilio_event("whatsapp", params), None)["statusCode"] == 200:
                    accepted[params["MessageSid"]] = f"p{n}"
                    trace.pop(0)
                busy = True
            runtime = get_runtime()
            for queue, handler in (("whatsapp", batch_processor), ("ai", reply_sender)):
                busy |= bool(QueueWorker(runtime, queue, handler, batch_size=10).poll_once())
            sweep = stalled_sweeper({}, None)
            busy |= bool(sweep["reset"])
        except Killed:
            kills += 1
            restart()
            busy = True
        if busy or trace:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > LEASE + 4:  # leases, visibility timeouts and retries ran out
            break
        time.sleep(0.05)
    counts = verdict(accepted, stack)
    counts["messages"] += len(accepted)
    counts["kills"] += kills
    reset_runtime()
    tmp.cleanup()
    return counts


def run_serve(seed: int) -> Counter:
    """`replies-engine serve`, killed with SIGKILL at seeded moments, started again each time."""
    from tests.processes import cli, post_signed, serving

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "REPLIES_"))},
            **ENV,
            "REPLIES_SQLITE_PATH": f"{tmp}/serve.db",
            "LOCAL_RESPONDER_DELAY_SECONDS": str(SERVE_AI_SECONDS),
            # longer than a reply may take, as `serve` checks: 1 s for the 0.5 s AI, 3 s for 1.5 s
            "REPLIES_VISIBILITY_TIMEOUT_SECONDS": "1" if SERVE_AI_SECONDS < 1 else "3",
            "SWEEP_INTERVAL_SECONDS": "1",
            "VERIFY_SIGNATURES": "enforce",
        }
        records = [conversation(f"p{n}", gsi_recipient_tel=person(n)) for n in range(PEOPLE)]
        cli(env, "conversations", "import", "-", stdin=json.dumps(records))
        trace = [(n, message(n, i)) for n in range(PEOPLE) for i in range(rng.randint(1, 3))]
        rng.shuffle(trace)
        accepted: dict[str, str] = {}
        kills = rng.randint(1, 3)
        for kill in [*range(kills), None]:
            with serving(env) as (url, process):
                deadline = time.monotonic() + (rng.uniform(0.2, 2.5) if kill is not None else 8)
                while time.monotonic() < deadline:
                    if trace:
                        n, params = trace.pop(0)
                        if post_signed(url, params).status_code == 200:
                            accepted[params["MessageSid"]] = f"p{n}"
                    time.sleep(rng.uniform(0.05, 0.4))
                if kill is not None:
                    process.send_signal(signal.SIGKILL)
                    process.wait(10)
        # counted in this process, on the database the serve used (an AWS run before left its backend set)
        os.environ.update(ENV, REPLIES_BACKEND="sqlite", REPLIES_SQLITE_PATH=env["REPLIES_SQLITE_PATH"])
        reset_runtime()
        counts = verdict(accepted, None)
        counts["messages"] += len(accepted)
        counts["kills"] += kills
        reset_runtime()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200, help="seeded in-process runs per backend")
    parser.add_argument("--backends", default="sqlite,aws")
    parser.add_argument("--serve", type=int, default=0, help="seeded runs of a live serve killed by SIGKILL")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--speculate", action="store_true", help="SPECULATE=on, with a 1 s quiet period")
    args = parser.parse_args()
    if args.speculate:
        global SERVE_AI_SECONDS
        ENV.update(SPECULATE="on", QUIET_SECONDS="1")
        SERVE_AI_SECONDS = 1.5
    logging.disable(logging.CRITICAL)
    results = {}
    server = None
    for backend in args.backends.split(","):
        factory = None
        if backend == "aws":
            from tests.aws import Stack, start_moto

            server, endpoint = start_moto()
            factory = partial(Stack, endpoint)
        started, total = time.monotonic(), Counter()
        for seed in range(args.seed, args.seed + args.runs):
            total += run_in_process(backend, seed, factory)
        results[backend] = {"runs": args.runs, "seconds": round(time.monotonic() - started), **total}
    if server:
        server.shutdown()
    if args.serve:
        started, total = time.monotonic(), Counter()
        for seed in range(args.seed, args.seed + args.serve):
            total += run_serve(seed)
        results["serve (SIGKILL)"] = {
            "runs": args.serve,
            "seconds": round(time.monotonic() - started),
            **total,
        }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    columns = (
        "kills",
        "messages",
        "lost",
        "unanswered",
        "double",
        "locked",
        "dead",
        "in doubt",
        "never sent",
    )
    print(f"{'engine':<16} {'runs':>5} {'s':>5} " + " ".join(f"{c:>10}" for c in columns))
    for name, row in results.items():
        print(
            f"{name:<16} {row['runs']:>5} {row['seconds']:>5} "
            + " ".join(f"{row.get(c, 0):>10}" for c in columns)
        )


if __name__ == "__main__":
    main()
