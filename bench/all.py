"""Every benchmark the docs show, with the arguments of their tables, one after the other (`make bench`).

Each one's output goes to `bench/results/<name>.txt`, headed by when, on what machine and at which commit
it ran: what `docs/benchmarks.md` quotes. Run them alone with `make bench ARGS="--only chaos webhook"`.
A full run takes about an hour on 2 cores; nothing else should run beside it (the figures are ratios
measured side by side, but a busy machine still moves them).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# name → its arguments for the documented table (the script is bench/NAME.py, or SCRIPTS' for NAME)
BENCHES = {
    "webhook": [],
    "cold_start": [],
    "history": [],
    "batching": [],
    "concurrency": ["--people", "1", "10", "30", "50", "200", "--speculate"],
    "typing": [
        "--people",
        "30",
        "200",
        "--ai",
        "4",
        "--gap",
        "1",
        "--speculate",
        "--baseline",
        "0",
        "--openai",
    ],
    "voice_notes": [],
    "chaos": ["--serve", "20"],  # 200 seeded runs per backend and 20 of a live serve: about 50 minutes
    "fuzz": [],
}
SCRIPTS = {"typing": "concurrency"}  # people who pause while they type; a slower AI, over HTTP


def header(name: str, args: list[str]) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return (
        f"# bench/{name}.py {' '.join(args)}\n"
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit or 'unknown'},"
        f" {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHES), default=list(BENCHES))
    chosen = parser.parse_args().only
    RESULTS.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in chosen:
        args = BENCHES[name]
        script = SCRIPTS.get(name, name)
        print(f"== bench/{script}.py {' '.join(args)}", flush=True)
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, str(ROOT / "bench" / f"{script}.py"), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        output = (
            header(script, args)
            + run.stdout
            + (f"\n# exit {run.returncode}\n{run.stderr}" if run.returncode else "")
        )
        (RESULTS / f"{name}.txt").write_text(output)
        print(run.stdout, end="", flush=True)
        print(f"   ({time.monotonic() - started:.0f} s, exit {run.returncode})", flush=True)
        if run.returncode:
            failed.append(name)
            print(run.stderr[-2000:], file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
