"""How often a burst of messages gets exactly one reply, per batching mode.

A seeded trace of bursts (1-6 messages, gaps lognormal with median 2.5 s; many conversations at
once) is replayed through the REAL stage 1, 2 and 3 code on the embedded engine, on a virtual clock:
everything the engine times goes through `replies_engine.clock.now`, which the replay advances in
steps of 0.1 s, so a 2,000-burst hour runs in seconds and each run is exact and repeatable. The AI
takes AI_SECONDS: each context it is handed reaches the reply stage that much later. With SPECULATE=on,
the reply stage's own test (`pipeline.superseded`, what its heartbeat asks every WATCH_SECONDS) runs on
each call in flight on the virtual clock, and a call it finds superseded is cancelled then: the reply
stage gets it at once and the responder raises CallCancelled, with the tokens spent so far.

    .venv/bin/python bench/batching.py [--bursts 2000] [--seed 7]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import conversation  # noqa: E402
from tests.payloads import BASE, TOKEN, twilio_event, whatsapp_text  # noqa: E402

from replies_engine import clock  # noqa: E402
from replies_engine.bootstrap import get_runtime, reset_runtime  # noqa: E402
from replies_engine.conversation import holds  # noqa: E402
from replies_engine.handlers import batch_processor, reply_sender, webhook_handler  # noqa: E402
from replies_engine.local.workers import QueueWorker  # noqa: E402
from replies_engine.ports import CallCancelled  # noqa: E402
from replies_engine.replies.pipeline import WATCH_SECONDS, superseded  # noqa: E402

AI_SECONDS = 4
STEP = 0.1
EPOCH = 1_800_000_000.0  # the virtual clock starts here


@dataclass(frozen=True)
class Message:
    at: float
    conversation: int
    sid: str


def trace(bursts: int, seed: int, spread: float, sigma: float) -> list[Message]:
    """Bursts of 1-6 messages, lognormal gaps (median 2.5 s, shape `sigma`), starting over `spread` s."""
    rng = random.Random(seed)
    messages = []
    for n in range(bursts):
        at = rng.uniform(0, spread)
        for m in range(rng.randint(1, 6)):
            if m:
                at += rng.lognormvariate(0.916, sigma)  # e^0.916 ≈ 2.5 s
            messages.append(Message(at, n, f"SM{n:06d}{m:02d}{'0' * 22}"))
    return sorted(messages, key=lambda m: m.at)


class Replay:
    def __init__(self, name: str, env: dict[str, str], messages: list[Message], bursts: int) -> None:
        self.name, self.messages, self.bursts = name, messages, bursts
        self.now = EPOCH
        self.tmp = tempfile.TemporaryDirectory()
        for name in {k for _, config in CONFIGS for k in config}:  # one configuration's settings only
            os.environ.pop(name, None)
        os.environ.update(
            REPLIES_BACKEND="sqlite",
            REPLIES_SQLITE_PATH=f"{self.tmp.name}/bench.db",
            TWILIO_AUTH_TOKEN=TOKEN,
            PUBLIC_BASE_URL=BASE,
            LOG_LEVEL="ERROR",
            LOCK_TIMEOUT_SECONDS="300",
            **env,
        )
        clock.now = lambda: self.now
        reset_runtime()
        self.runtime = get_runtime()
        self.speculate = self.runtime.settings.speculate
        self.responder = self.runtime.responder.respond
        for n in range(bursts):
            self.runtime.store.put(conversation(f"c{n}", gsi_recipient_tel=_phone(n)))
        self.refused = 0
        self.ai_calls = self.cancelled_calls = self.tokens = 0
        self.ai_seconds = 0.0  # the AI's time spent, cancelled calls' part included
        self.looks = self.replies_runs = 0  # the watch's store reads; the AI queue's records handled
        self.thinking: list[dict] = []  # the AI's calls in flight: {"context", "started", "looked"}
        self.cancelled: dict[tuple[str, int], float] = {}  # (batch, round) → the part of the call done
        self._send = self.runtime.queue.send
        self.runtime.queue.send = self._think
        self.runtime.responder.respond = self._respond
        self.batch = QueueWorker(self.runtime, "whatsapp", batch_processor)
        self.ai = QueueWorker(self.runtime, "ai", self._reply_stage)

    def _reply_stage(self, event, context):
        self.replies_runs += len(event["Records"])
        return reply_sender(event, context)

    def _think(self, queue, body, **kwargs):
        """A context handed to the AI is thought about first (a held reply is thought already)."""
        context = json.loads(body)
        if queue != "ai" or "held_answer" in context:
            return self._send(queue, body, **kwargs)
        self.thinking.append({"context": context, "started": self.now, "looked": self.now})
        return None

    def _calls_in_flight(self) -> None:
        """Each call ends after AI_SECONDS, or, speculating, when the reply stage's watch finds it
        superseded: the reply stage gets it then."""
        for call in list(self.thinking):
            context, done = call["context"], (self.now - call["started"]) / AI_SECONDS
            if done < 1 and not (self.speculate and self.now - call["looked"] >= WATCH_SECONDS):
                continue
            if done < 1:
                call["looked"] = self.now
                self.looks += 1
                record = self.runtime.store.get(context["conversation_id"])
                if holds(record, context["batch_id"]) and not superseded(self.runtime, context, record):
                    continue
                self.cancelled[_key(context)] = done
            self.thinking.remove(call)
            self.ai_seconds += min(done, 1) * AI_SECONDS
            self._send("ai", json.dumps(context, ensure_ascii=False))

    def _respond(self, view, **options):
        """The responder, counted: its calls, those cancelled, and their tokens."""
        self.ai_calls += 1
        done = self.cancelled.pop(_key(view), None)
        answer = self.responder(view, **options)  # at once: the thinking was the wait before
        usage = answer.usage
        if done is not None:  # given up part way: the prompt read, a part of the answer written
            self.cancelled_calls += 1
            written = round(done * usage["completion_tokens"])
            usage = {**usage, "completion_tokens": written, "total_tokens": usage["prompt_tokens"] + written}
        self.tokens += usage["total_tokens"]
        if done is not None:
            raise CallCancelled(usage)
        return answer

    def run(self) -> dict[str, float]:
        pending = list(self.messages)
        end = self.messages[-1].at + 120
        while self.now - EPOCH < end:
            while pending and pending[0].at <= self.now - EPOCH:
                self._post(pending.pop(0))
            self._calls_in_flight()
            while self.batch.poll_once() or self.ai.poll_once():
                pass
            self.now += STEP
        return self._results()

    def _post(self, message: Message) -> None:
        params = whatsapp_text(
            f"m {message.sid}", MessageSid=message.sid, From=f"whatsapp:{_phone(message.conversation)}"
        )
        response = webhook_handler(twilio_event("whatsapp", params), None)
        if "<Message>" in response["body"]:
            self.refused += 1  # CONVERSATION_LOCKED: answered "we're working on it", not by the AI

    def _results(self) -> dict[str, float]:
        replies = defaultdict(list)
        for entry in self.runtime.outbox.list():
            replies[entry["conversation_id"]].append(clock.parse_iso(entry["created_at"]))
        last_message = defaultdict(float)
        for message in self.messages:
            last_message[f"c{message.conversation}"] = EPOCH + message.at
        waits = [max(times) - last_message[c] for c, times in replies.items()]
        sent = sum(len(times) for times in replies.values())
        lost = self._lost()
        result = {
            "one reply": 100 * sum(1 for c in last_message if len(replies.get(c, [])) == 1) / self.bursts,
            "replies/burst": sent / self.bursts,
            "refused": self.refused,
            "p50 wait": statistics.median(waits),
            "p95 wait": statistics.quantiles(waits, n=20)[18],
            "AI calls/burst": self.ai_calls / self.bursts,
            "cancelled/burst": self.cancelled_calls / self.bursts,
            "tokens/burst": self.tokens / self.bursts,
            "AI s/burst": self.ai_seconds / self.bursts,
            "stage 3 records/burst": self.replies_runs / self.bursts,
            "watch reads/burst": self.looks / self.bursts,
            "lost": lost,
        }
        reset_runtime()
        self.tmp.cleanup()
        return result

    def _lost(self) -> int:
        """Messages neither in their conversation nor in a queue or DLQ (must be 0)."""
        kept = set()
        store = self.runtime.store
        for record in store.list():
            stored = store.messages(record["conversation_id"])  # messages are kept apart from the record
            waiting = record.get("pending_messages", []) + record.get("refused_messages", [])
            kept |= {m["message_id"] for m in stored + waiting}
        for queue in ("whatsapp", "whatsapp-dlq"):
            kept |= {json.loads(m.body).get("message_sid") for m in self.runtime.queue.peek(queue)}
        return sum(1 for m in self.messages if m.sid not in kept)


def _key(context: dict) -> tuple[str, int]:
    return context["batch_id"], context.get("regenerations", 0)


def _phone(n: int) -> str:
    return f"+4915{n:09d}"


CONFIGS = [
    ("delay 10 s", {"BATCHING_MODE": "delay", "BATCH_DELAY_SECONDS": "10", "REQUEUE_DELAY_SECONDS": "15"}),
    ("delay 20 s", {"BATCHING_MODE": "delay", "BATCH_DELAY_SECONDS": "20", "REQUEUE_DELAY_SECONDS": "15"}),
    ("debounce quiet 2 s", {"BATCHING_MODE": "debounce", "QUIET_SECONDS": "2"}),
    ("debounce quiet 3 s", {"BATCHING_MODE": "debounce", "QUIET_SECONDS": "3"}),
    ("debounce quiet 3 s, drop", {"BATCHING_MODE": "debounce", "QUIET_SECONDS": "3", "SUPERSEDE": "drop"}),
    ("debounce quiet 3 s, speculate", {"BATCHING_MODE": "debounce", "QUIET_SECONDS": "3", "SPECULATE": "on"}),
    ("debounce quiet 5 s, speculate", {"BATCHING_MODE": "debounce", "QUIET_SECONDS": "5", "SPECULATE": "on"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bursts", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--spread", type=float, default=3600, help="seconds over which bursts start")
    parser.add_argument("--sigma", type=float, default=0.5, help="shape of the lognormal gaps")
    args = parser.parse_args()
    messages = trace(args.bursts, args.seed, args.spread, args.sigma)
    by_conversation = defaultdict(list)
    for message in messages:
        by_conversation[message.conversation].append(message.at)
    gaps = [b - a for times in by_conversation.values() for a, b in itertools.pairwise(times)]
    print(
        f"{args.bursts} bursts, {len(messages)} messages, gaps p50 {statistics.median(gaps):.1f} s, "
        f"p95 {statistics.quantiles(gaps, n=20)[18]:.1f} s (sigma {args.sigma}), AI {AI_SECONDS} s, seed {args.seed}"
    )
    header = [
        "mode",
        "one reply %",
        "replies/burst",
        "refused",
        "wait p50 s",
        "wait p95 s",
        "AI calls/burst",
        "of them cancelled",
        "tokens/burst",
        "AI s/burst",
        "stage 3 records/burst",
        "watch reads/burst",
        "lost",
    ]
    print(" | ".join(header))
    for name, env in CONFIGS:
        r = Replay(name, env, messages, args.bursts).run()
        print(
            f"{name} | {r['one reply']:.1f} | {r['replies/burst']:.2f} | {r['refused']} | {r['p50 wait']:.1f} | "
            f"{r['p95 wait']:.1f} | {r['AI calls/burst']:.2f} | {r['cancelled/burst']:.2f} | "
            f"{r['tokens/burst']:.0f} | {r['AI s/burst']:.1f} | {r['stage 3 records/burst']:.2f} | "
            f"{r['watch reads/burst']:.1f} | {r['lost']}"
        )


if __name__ == "__main__":
    main()
