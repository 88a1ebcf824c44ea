"""Each benchmark, briefly, as a user runs it: a storage or API change cannot silently break one (the
long runs and their figures are in docs/benchmarks.md). `bench/chaos.py` and `bench/fuzz.py` have
tests of their own (tests/test_chaos.py, tests/test_hostile_input.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(script: str, *args: str) -> list[list[str]]:
    """The benchmark's table rows, cells split on `|` or runs of spaces."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPLIES_", "AWS_", "TWILIO_"))}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [
        [cell.strip() for cell in (line.split("|") if "|" in line else line.split())]
        for line in done.stdout.splitlines()
        if line.strip()
    ]


def column(rows: list[list[str]], name: str) -> list[str]:
    header = next(row for row in rows if name in row)
    index = header.index(name)
    return [row[index] for row in rows[rows.index(header) + 1 :] if len(row) == len(header)]


def test_batching_loses_nothing_in_any_mode():
    rows = run("batching.py", "--bursts", "20")

    assert column(rows, "lost") == ["0"] * 7  # two delay rows, five debounce rows
    assert all(float(share) == 100.0 for share in column(rows, "one reply %")[2:5])
    waits = [float(wait) for wait in column(rows, "wait p50 s")]
    assert waits[5] < waits[3]  # speculating: sooner than the same quiet period without
    cancelled = [float(calls) for calls in column(rows, "of them cancelled")]
    assert cancelled[3] == 0 < cancelled[5]  # only speculation cancels calls, and it does here
    assert all(float(tokens) > 0 for tokens in column(rows, "tokens/burst"))


def test_concurrency_answers_everyone_once():
    rows = run("concurrency.py", "--people", "2", "--ai", "0.2", "--baseline", "0")

    [row] = [r for r in rows if r and r[0] == "default"]
    people, messages, answered, *_, calls, tokens, lost, twice = row[1:]
    assert (answered, lost, twice) == (people, "0", "0") and int(messages) >= int(people)
    assert float(calls) >= 1 and float(tokens) > 0


def test_speculating_against_a_streaming_model_answers_everyone_once():
    rows = run("concurrency.py", "--people", "2", "--ai", "1", "--gap", "0.8", "--speculate",
               "--baseline", "0", "--openai")  # fmt: skip

    engines = [r for r in rows if r and r[0] in ("default", "SPECULATE=on")]
    assert len(engines) == 2
    for row in engines:
        people, _msgs, answered, *_, lost, twice, model = row[1:]
        asked, closed = map(int, model.split("/"))
        assert (answered, lost, twice) == (people, "0", "0")
        assert asked >= int(answered) and closed <= asked - int(answered)  # each reply one whole call


def test_voice_notes_are_transcribed_and_everyone_answered():
    rows = run("voice_notes.py", "--people", "2", "--ai", "0.2", "--transcribe", "0.2")

    text, voice = rows[-2:]  # people, group (words), answered, …, transcriptions, no transcript
    assert "1/1" in text and "1/1" in voice
    assert (voice[-2], voice[-1]) == ("1", "0")  # one transcription, none missing


@pytest.mark.parametrize(
    ("script", "args", "row"),
    [
        ("history.py", ("--backends", "sqlite", "--histories", "10,100", "--repeat", "2"), "100"),
        ("webhook.py", ("--requests", "20", "--clients", "1"), "serve,"),
        ("cold_start.py", ("--runs", "1"), "operator_handler"),
    ],
)
def test_the_other_benchmarks_print_their_tables(script, args, row):
    rows = run(script, *args)

    assert any(r and r[0] == row for r in rows), rows
