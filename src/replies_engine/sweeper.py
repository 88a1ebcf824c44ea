"""The stalled-lock sweeper: locks older than LOCK_TIMEOUT_SECONDS → `processing_timeout`.

It reads only locked conversations (the sparse lock index), never the whole table.
"""

from __future__ import annotations

import logging

from . import clock
from .batching.processor import flush_if_pending
from .bootstrap import Runtime
from .conversation import lock_age

logger = logging.getLogger(__name__)


def sweep(runtime: Runtime) -> dict[str, int]:
    """Reset every stalled lock; returns `{"checked": locked conversations read, "reset": freed}`."""
    now = clock.now()
    locked = runtime.store.list_locked()
    reset = 0
    for record in locked:
        age = lock_age(record, now)
        if age is not None and age <= runtime.settings.lock_timeout_seconds:
            continue
        log = {
            "conversation_id": record["conversation_id"],
            "batch_id": record.get("lock_owner"),
            "lock_age": age,
        }
        after = runtime.store.reset_stalled(record["conversation_id"], record.get("lock_owner"), now=now)
        if after:
            reset += 1
            flush_if_pending(runtime, after)
            runtime.metrics.add("LockTimeoutReset")
            logger.warning("stalled lock reset to processing_timeout", extra=log)
    return {"checked": len(locked), "reset": reset}
