"""An ASGI app served by uvicorn in a thread on loopback, for tests, benchmarks and scripts.

:func:`serve_app` starts the server on ``127.0.0.1`` (a free port unless given), waits until it
listens, yields its URL and stops it on exit. :func:`free_port` finds a port free now.

What this module does not do: bind anything but loopback, or start an engine (the app's
``lifespan`` may).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["free_port", "serve_app"]

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_app(
    app: Any, *, port: int | None = None, start_timeout: float = 20.0, lifespan: str = "on"
) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 in a daemon thread; yield ``http://127.0.0.1:<port>``.

    Raises:
        RuntimeError: The server did not listen within ``start_timeout`` seconds.
    """
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning", lifespan=lifespan)
    )
    thread = threading.Thread(target=server.run, name="served-app", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("the app's server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
