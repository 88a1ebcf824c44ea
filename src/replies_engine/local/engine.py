"""`replies-engine serve`: the whole engine in one process: the HTTP server, the queue workers and
the sweeper, all calling the same handlers as in Lambda."""

from __future__ import annotations

import logging

from ..bootstrap import get_runtime

logger = logging.getLogger("replies_engine.engine")


def serve(host: str, port: int) -> None:
    """Serve the webhooks on http://host:port and run the workers until interrupted (Ctrl-C)."""
    import uvicorn

    from .server import create_app
    from .workers import LocalEngine

    runtime = get_runtime()  # fail now, not on the first request, when the configuration is wrong
    settings = runtime.settings
    startup = {"url": f"http://{host}:{port}", "backend": settings.backend, "database": settings.sqlite_path}
    # Without credentials of their own, requests are signed with the engine's (`replies-engine send` uses them).
    if settings.verify_signatures != "off" and not settings.twilio_auth_token:
        startup["twilio_auth_token"] = runtime.twilio_auth_token()
    if settings.verify_signatures != "off" and settings.email_auth and not settings.email_webhook_token:
        startup["email_webhook_token"] = runtime.secret("EMAIL_WEBHOOK_TOKEN")
    engine = LocalEngine(runtime)
    engine.start()
    logger.info("replies-engine serving", extra=startup)
    try:
        loopback = host in ("127.0.0.1", "localhost", "::1")
        uvicorn.run(
            create_app(loopback=loopback), host=host, port=port, log_level="warning", access_log=False
        )
    finally:
        engine.stop()
        logger.info("replies-engine stopped")
