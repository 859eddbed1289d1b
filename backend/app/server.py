"""Running the service under uvicorn with a clean SIGTERM: drain, then exit 0."""

from __future__ import annotations

import signal
import sys

import uvicorn

from app.config import Settings
from app.main import create_app

#: Seconds uvicorn waits for open connections after the drain, on top of DRAIN_GRACE_S.
_SHUTDOWN_MARGIN_S = 5


def run(settings: Settings | None = None, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the app on ``host:port`` until SIGTERM or Ctrl-C.

    On SIGTERM the app drains (see ``app.lifespan.drain``) and hands the signal to uvicorn,
    which shuts down gracefully and re-raises the signal once done; the handler installed here
    turns that into exit status 0.
    """
    settings = settings or Settings()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=settings.observability.log_level.lower(),
        log_config=None,  # uvicorn's own lines go through app.observability.logging too
        timeout_graceful_shutdown=int(settings.lifecycle.drain_grace_s) + _SHUTDOWN_MARGIN_S,
    )
