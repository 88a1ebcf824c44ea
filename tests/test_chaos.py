"""A handful of the seeded crash runs of `bench/chaos.py`, on both backends: the engine is
killed before or after seeded store and queue calls, started again, and at the end every accepted
message is in its conversation once, every conversation answered after its last message, nobody
answered twice and nothing left locked. The benchmark runs hundreds of seeds."""

from __future__ import annotations

import os

import pytest
from bench.chaos import run_in_process

from replies_engine.replies import pipeline

from .aws import Stack


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_seeded_crashes_lose_nothing_and_answer_everyone(backend, seed, request, monkeypatch):
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the run sets its own environment,
    monkeypatch.setattr(pipeline, "RETRY_BACKOFF_SECONDS", pipeline.RETRY_BACKOFF_SECONDS)  # and timings
    endpoint = request.getfixturevalue("moto_endpoint") if backend == "aws" else None

    counts = run_in_process(backend, seed, lambda: Stack(endpoint))

    assert counts["kills"] >= 1 and counts["messages"] >= 3
    assert {k: counts[k] for k in ("lost", "unanswered", "double", "locked", "dead")} == {
        "lost": 0,
        "unanswered": 0,
        "double": 0,
        "locked": 0,
        "dead": 0,
    }
