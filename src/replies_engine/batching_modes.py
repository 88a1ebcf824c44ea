"""The two batching modes, one object each, chosen once from the settings (`Settings.batching`).

`delay`: stage 1 sends each message with a delay (BATCH_DELAY_SECONDS) that opens a window, and stage 2
answers what one receive brings. `debounce` (the default): stage 1 sends at once, stage 2 adds each
message to the conversation's `pending_messages` and answers them together when the person has been
quiet for QUIET_SECONDS (or a cap is reached), moving in what arrives while the AI works. With
`speculate` (SPECULATE=on) the AI starts at once instead, and its reply is held until the person has
been quiet for QUIET_SECONDS: what they write meanwhile is moved in and answered again with the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from . import clock
from .conversation import readable


@dataclass(frozen=True)
class Delay:
    delay_seconds: int
    reply_when_locked: bool  # LOCKED_POLICY=reply: a message to a locked conversation is answered so

    supersede = None  # a reply is never superseded: what arrives meanwhile is the next batch
    speculate = False  # the AI starts when the batch is made

    def hold_seconds(self, batch: list[Any], now: float) -> float:
        return 0  # a reply goes when it is ready

    @property
    def enqueue_delay(self) -> int:
        return self.delay_seconds


@dataclass(frozen=True)
class Debounce:
    quiet_seconds: int
    max_wait_seconds: int
    max_batch_messages: int
    supersede: str  # "regenerate" or "drop": what a reply does when messages came while it was made
    speculate: bool = False  # think at the first message; hold the reply for the quiet period

    reply_when_locked = False  # a locked conversation keeps collecting for the next batch
    enqueue_delay = 0

    def due(self, pending: list[Any], now: float) -> bool:
        """Answer now? When the newest pending message is quiet old, or the oldest max_wait old, or
        max_batch are pending; at once when one cannot be read, so that it goes to the dead-letter
        queue and blocks no one."""
        if not pending:
            return False
        if len(readable(pending)) < len(pending) or self.speculate:
            return True
        received = [clock.parse_iso(m["timestamp"]) for m in pending]
        slack = 0.05  # clocks and SQS's whole-second delays
        return (
            len(pending) >= self.max_batch_messages
            or now - max(received) + slack >= self.quiet_seconds
            or now - min(received) + slack >= self.max_wait_seconds
        )

    def next_look(self, pending: list[Any], now: float) -> int:
        """When to look again after a message was added: at the quiet time, or earlier for the caps."""
        if len(pending) >= self.max_batch_messages or self.speculate:
            return 0
        oldest = min((clock.parse_iso(m["timestamp"]) for m in readable(pending)), default=now)
        return max(0, min(self.quiet_seconds, math.ceil(self.max_wait_seconds - (now - oldest))))

    def hold_seconds(self, batch: list[Any], now: float) -> float:
        """How long a ready reply to `batch` waits (speculate): until its newest message is quiet old,
        but never past the oldest's max wait; 0 without speculation."""
        received = [clock.parse_iso(m["timestamp"]) for m in readable(batch)]
        if not self.speculate or not received:
            return 0
        until = min(max(received) + self.quiet_seconds, min(received) + self.max_wait_seconds)
        return max(0.0, until - now)


BatchingMode = Delay | Debounce
