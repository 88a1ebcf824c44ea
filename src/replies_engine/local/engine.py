"""`replies-engine serve`: the whole engine in one process: the HTTP server, the queue workers and
the sweeper, all calling the same handlers as in Lambda; or, `--inbox-only` (the default against the
AWS backend), the HTTP server alone."""

from __future__ import annotations

import logging
import os
import sys
from typing import IO

from ..bootstrap import get_runtime
from ..config import ConfigurationError, Settings

logger = logging.getLogger("replies_engine.engine")


def serve(host: str, port: int, *, workers: bool | None = None) -> None:
    """Serve the webhooks and the inbox on http://host:port and, with `workers`, run the queue workers
    and the sweeper, until interrupted (Ctrl-C). By default the embedded backend runs them and the AWS
    backend does not: there the stack's functions consume its queues, and a laptop beside them must not
    (`--workers` says otherwise)."""
    import uvicorn

    from .server import create_app
    from .workers import LocalEngine

    runtime = get_runtime()  # fail now, not on the first request, when the configuration is wrong
    settings = runtime.settings
    if workers is None:
        workers = settings.backend == "sqlite"
    held = _only_engine_on(settings) if workers else None  # noqa: F841 (held open until the process ends)
    database = os.path.abspath(settings.sqlite_path) if settings.backend == "sqlite" else None
    startup = {"url": f"http://{host}:{port}", "backend": settings.backend, "database": database}
    # Without credentials of their own, requests are signed with the engine's (`replies-engine send` uses them).
    if settings.verify_signatures != "off" and not settings.twilio_auth_token:
        startup["twilio_auth_token"] = runtime.twilio_auth_token()
    if settings.verify_signatures != "off" and settings.email_auth and not settings.email_webhook_token:
        startup["email_webhook_token"] = runtime.secret("EMAIL_WEBHOOK_TOKEN")
    if not workers:
        startup["workers"] = "none: the inbox and the API only"
    engine = LocalEngine(runtime) if workers else None
    if engine is not None:
        engine.start()
    print(  # for the person at the keyboard, before the JSON logs
        " · ".join(f"{k.replace('_', ' ')} {v}" for k, v in startup.items() if v).replace("url ", "serving "),
        file=sys.stderr,
        flush=True,
    )
    logger.info("replies-engine serving", extra=startup)
    try:
        loopback = host in ("127.0.0.1", "localhost", "::1")
        uvicorn.run(
            create_app(loopback=loopback), host=host, port=port, log_level="warning", access_log=False
        )
    finally:
        if engine is not None:
            engine.stop()
        logger.info("replies-engine stopped")


def _only_engine_on(settings: Settings) -> IO[str] | None:
    """Refuse a second `serve` on the same embedded database: its workers and sweeper would run beside
    the first one's. The lock is the operating system's: it goes with the process, however it ends."""
    if settings.backend != "sqlite":
        return None
    import fcntl

    lock = open(f"{settings.sqlite_path}-serve.lock", "w")  # noqa: SIM115 (held for the process's life)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ConfigurationError(
            f"another replies-engine serve is running on {os.path.abspath(settings.sqlite_path)}:"
            " stop it, or set REPLIES_SQLITE_PATH to another database"
        ) from None
    return lock
