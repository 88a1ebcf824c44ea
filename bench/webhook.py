"""Stage 1 throughput on the embedded engine, measured side by side in one run.

  direct   webhook_handler called in-process (parse, verify, lookup, enqueue)
  serve    the same, through `replies-engine serve` on loopback HTTP, C concurrent clients

Each request is a distinct, signed Twilio WhatsApp message that is accepted and queued. Prints
requests/s, latency percentiles, and the ratio to `direct`. Loopback only; bounded by --requests.

    .venv/bin/python bench/webhook.py [--requests 600] [--clients 1 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx2 as httpx  # noqa: E402
from tests.conftest import conversation  # noqa: E402
from tests.payloads import BASE, TOKEN, sign, whatsapp_text  # noqa: E402
from tests.processes import serving  # noqa: E402

CONVERSATION = conversation("bench")


def environment(db: str, public_base_url: str = BASE) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("REPLIES_", "TWILIO_"))},
        "REPLIES_SQLITE_PATH": db,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "PUBLIC_BASE_URL": public_base_url,
        "LOG_LEVEL": "WARNING",
        "BATCHING_MODE": "delay",
        "BATCH_DELAY_SECONDS": "900",  # the workers stay idle: this measures stage 1 alone
    }


def bench_direct(requests: int) -> list[float]:
    from tests.payloads import twilio_event

    from replies_engine.bootstrap import get_runtime, reset_runtime
    from replies_engine.handlers import webhook_handler

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(environment(f"{tmp}/direct.db"))
        reset_runtime()
        get_runtime().store.put(CONVERSATION)
        events = [twilio_event("whatsapp", whatsapp_text(f"m{i}")) for i in range(requests)]
        latencies = []
        for event in events:
            started = time.perf_counter()
            assert webhook_handler(event, None)["statusCode"] == 200
            latencies.append(time.perf_counter() - started)
        reset_runtime()
    return latencies


def bench_serve(requests: int, clients: int) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        env = environment(f"{tmp}/serve.db", public_base_url="")
        exe = Path(sys.executable).parent / "replies-engine"
        subprocess.run(
            [exe, "conversations", "import", "-"],
            input=json.dumps([CONVERSATION]),
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        with serving(env) as (url, _):
            bodies = []
            for i in range(requests):
                params = whatsapp_text(f"m{i}")
                bodies.append((urlencode(params), sign(f"{url}/whatsapp", params)))
            latencies: list[float] = []
            lock = threading.Lock()

            def client(share: list[tuple[str, str]]) -> None:
                with httpx.Client() as http:
                    for body, signature in share:
                        started = time.perf_counter()
                        response = http.post(
                            f"{url}/whatsapp",
                            content=body,
                            headers={
                                "Content-Type": "application/x-www-form-urlencoded",
                                "X-Twilio-Signature": signature,
                            },
                        )
                        elapsed = time.perf_counter() - started
                        assert response.status_code == 200, response.text
                        with lock:
                            latencies.append(elapsed)

            threads = [threading.Thread(target=client, args=(bodies[i::clients],)) for i in range(clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return time.perf_counter() - started, latencies


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()

    direct = bench_direct(args.requests)
    direct_rate = len(direct) / sum(direct)
    rows = [("direct (in-process)", direct_rate, direct)]
    for clients in args.clients:
        elapsed, latencies = bench_serve(args.requests, clients)
        rows.append(
            (f"serve, {clients} client{'s' if clients > 1 else ''}", len(latencies) / elapsed, latencies)
        )

    print(f"{'path':<22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs direct':>10}")
    for name, rate, latencies in rows:
        print(
            f"{name:<22} {rate:8.0f} {percentile(latencies, 50):8.2f} {percentile(latencies, 99):8.2f} "
            f"{rate / direct_rate:10.2f}"
        )


if __name__ == "__main__":
    main()
