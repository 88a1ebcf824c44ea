"""Voice notes on the wall clock, through a live `replies-engine serve` on loopback.

N people write at the same moment: half send a text, half a text and a voice note. The engine runs its
defaults (debounce, QUIET_SECONDS=3) against an OpenAI-compatible server on loopback whose
transcriptions take --transcribe seconds and whose answers take --ai seconds, and a media host. For
each group it prints the time from a person's last message to their reply (p50, max) against its
ideal (quiet + AI; quiet + transcription + AI), side by side in one run; the transcriptions paid for
per voice note; and the AI asked without the transcript (must be 0).

    .venv/bin/python bench/voice_notes.py [--people 2 20 100] [--ai 2] [--transcribe 1.5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
from tests.fakes import Loopback, slowly  # noqa: E402
from tests.payloads import TOKEN, sign, whatsapp_media, whatsapp_text  # noqa: E402
from tests.processes import cli, serving  # noqa: E402

from replies_engine import clock  # noqa: E402
from replies_engine.adapters.sqlite import Database, SqliteOutbox  # noqa: E402

QUIET = 3
VOICE = b"OggS\x00\x02" + bytes(range(256)) * 64  # 16 KB that look like Ogg
TRANSCRIPT = "I can come on Friday at three"


def person(n: int) -> str:
    return f"+4915100{n:05d}"


def run(people: int, ai_seconds: float, transcribe_seconds: float) -> dict[str, dict[str, float]]:
    ai = Loopback(
        {
            "/v1/audio/transcriptions": [slowly(transcribe_seconds, (200, {"text": TRANSCRIPT}))],
            "/v1/chat/completions": [
                slowly(ai_seconds, (200, {"choices": [{"message": {"role": "assistant", "content": "OK"}}]}))
            ],
        }
    )
    files = Loopback({"/voice.ogg": [(200, VOICE, {"Content-Type": "audio/ogg"})]})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("REPLIES_", "TWILIO_"))},
                "REPLIES_SQLITE_PATH": f"{tmp}/bench.db",
                "TWILIO_AUTH_TOKEN": TOKEN,
                "LOG_LEVEL": "WARNING",
                "QUIET_SECONDS": str(QUIET),
                "RESPONDER": "openai",
                "OPENAI_BASE_URL": f"{ai.url}/v1",
                "OPENAI_API_KEY": "sk-bench",
                "TRANSCRIBE_MODEL": "whisper-1",
            }
            records = [conversation(f"p{n}", gsi_recipient_tel=person(n)) for n in range(people)]
            cli(env, "conversations", "import", "-", stdin=json.dumps(records))
            bursts = {}
            for n in range(people):
                address = {"From": f"whatsapp:{person(n)}", "WaId": person(n)[1:]}
                burst = [whatsapp_text(f"hello from {n}", **address)]
                if n % 2:
                    note = whatsapp_media("audio/ogg", url=f"{files.url}/voice.ogg")
                    burst.append({**note, **address})
                bursts[n] = burst
            with serving(env) as (url, _), httpx.Client(limits=httpx.Limits(max_connections=32)) as http:

                def post_burst(n: int) -> tuple[int, float]:
                    for params in bursts[n]:
                        http.post(
                            f"{url}/whatsapp",
                            content=urlencode(params),
                            headers={
                                "Content-Type": "application/x-www-form-urlencoded",
                                "X-Twilio-Signature": sign(f"{url}/whatsapp", params),
                            },
                        ).raise_for_status()
                    return n, clock.now()

                with ThreadPoolExecutor(32) as pool:
                    posted = dict(pool.map(post_burst, range(people)))
                outbox = SqliteOutbox(Database(env["REPLIES_SQLITE_PATH"]))
                deadline = time.monotonic() + 60 + people * (ai_seconds + transcribe_seconds)
                while (
                    len({r["conversation_id"] for r in outbox.list()}) < people
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.2)
                replies = outbox.list()
        chats = [json.loads(r["body"]) for r in ai.to("/v1/chat/completions")]
    finally:
        ai.close()
        files.close()

    def asked(n: int) -> list[str]:
        """The chat requests made for person `n`."""
        return [c for c in map(json.dumps, chats) if re.search(rf"hello from {n}\b", c)]

    rows = {}
    for group, members in (("text", range(0, people, 2)), ("text + voice note", range(1, people, 2))):
        waits = [
            clock.parse_iso(r["created_at"]) - posted[n]
            for n in members
            for r in replies
            if r["conversation_id"] == f"p{n}"
        ]
        ideal = QUIET + ai_seconds + (transcribe_seconds if group != "text" else 0)
        rows[group] = {
            "people": len(members),
            "answered": len(waits),
            "p50_s": statistics.median(waits) if waits else float("nan"),
            "max_s": max(waits) if waits else float("nan"),
            "ideal_s": ideal,
            "x_ideal": max(waits) / ideal if waits else float("nan"),
            "without_transcript": sum(TRANSCRIPT not in c for n in members for c in asked(n))
            if group != "text"
            else 0,
        }
    rows["text + voice note"]["transcriptions"] = len(ai.to("/v1/audio/transcriptions"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, nargs="+", default=[2, 20, 100])
    parser.add_argument("--ai", type=float, default=2.0, help="the model's seconds per answer")
    parser.add_argument("--transcribe", type=float, default=1.5, help="seconds per transcription")
    args = parser.parse_args()

    print(
        f"{'people':>6} {'group':<18} {'answered':>8} {'p50 s':>6} {'max s':>6} {'ideal s':>7} {'× ideal':>7} "
        f"{'transcriptions':>14} {'no transcript':>13}"
    )
    for people in args.people:
        for group, r in run(people, args.ai, args.transcribe).items():
            print(
                f"{people:>6} {group:<18} {r['answered']:>4}/{r['people']:<3} {r['p50_s']:>6.1f} {r['max_s']:>6.1f} "
                f"{r['ideal_s']:>7.1f} {r['x_ideal']:>7.2f} {r.get('transcriptions', '–'):>14} "
                f"{r['without_transcript']:>13}"
            )


if __name__ == "__main__":
    main()
