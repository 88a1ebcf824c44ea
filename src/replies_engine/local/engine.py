"""`replies-engine serve`: the whole engine in one process."""

from __future__ import annotations

import logging

from ..bootstrap import get_runtime

logger = logging.getLogger("replies_engine.engine")


def serve(host: str, port: int) -> None:
    """Serve the webhooks on http://host:port until interrupted."""
    import uvicorn

    from .server import create_app

    runtime = get_runtime()  # fail now, not on the first request, when the configuration is wrong
    settings = runtime.settings
    startup = {"url": f"http://{host}:{port}", "backend": settings.backend, "database": settings.sqlite_path}
    if settings.verify_signatures != "off" and not settings.twilio_auth_token:
        # No Twilio account: requests are signed with the engine's own token (`replies-engine send` uses it).
        startup["twilio_auth_token"] = runtime.twilio_auth_token()
    logger.info("replies-engine serving", extra=startup)
    uvicorn.run(create_app(), host=host, port=port, log_level="warning", access_log=False)
