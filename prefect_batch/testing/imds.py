"""A fake EC2 instance metadata service (IMDSv2) on loopback, for spot notice tests.

:class:`FakeIMDS` answers ``PUT /latest/api/token`` (with
``X-aws-ec2-metadata-token-ttl-seconds``) with a new token and the two notice paths
(``/latest/meta-data/spot/instance-action``,
``/latest/meta-data/events/recommendations/rebalance``) with 404 until a notice is set, 401
without a valid token. A notice is set for the tokens issued so far: on a machine shared by
several "instances" (the tests' sshd servers), an agent started later gets a token of its own
and sees no notice, like a replacement instance. It binds loopback only and records every
request. Nothing here imports pytest.
"""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["INSTANCE_ACTION", "REBALANCE", "FakeIMDS"]

INSTANCE_ACTION = "/latest/meta-data/spot/instance-action"
REBALANCE = "/latest/meta-data/events/recommendations/rebalance"


class FakeIMDS:
    """IMDSv2 on ``host`` (loopback), a free port; use as a context manager.

    Attributes:
        url: ``http://host:port``.
        requests: ``(method, path, headers)`` of every request, in order (header names in
            lower case).
        tokens: Every token issued, in order.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        if not host.startswith("127."):
            raise ValueError(f"a fake IMDS binds loopback only, not {host}")
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.tokens: list[str] = []
        self._valid: set[str] = set()
        self._notices: dict[str, dict[str, bytes]] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _answer(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                fake._record(self)
                if self.path != "/latest/api/token":
                    return self._answer(404)
                if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "").isdigit():
                    return self._answer(400)
                self._answer(200, fake._issue().encode())

            def do_GET(self) -> None:
                fake._record(self)
                token = self.headers.get("X-aws-ec2-metadata-token", "")
                with fake._lock:
                    valid = token in fake._valid
                    body = fake._notices.get(token, {}).get(self.path)
                if not valid:
                    return self._answer(401)
                if body is None:
                    return self._answer(404)
                self._answer(200, body)

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def _record(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            headers = {k.lower(): v for k, v in handler.headers.items()}
            self.requests.append((handler.command, handler.path, headers))

    def _issue(self) -> str:
        with self._lock:
            token = f"token-{next(self._counter)}"
            self.tokens.append(token)
            self._valid.add(token)
            return token

    def start(self) -> FakeIMDS:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-imds", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeIMDS:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- what it answers ---------------------------------------------------------------------

    def set_notice(self, path: str, body: Any, tokens: list[str] | None = None) -> None:
        """Answer ``path`` with ``body`` (JSON) to ``tokens`` (default: every token so far)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        with self._lock:
            for token in self.tokens if tokens is None else tokens:
                self._notices.setdefault(token, {})[path] = data

    def interrupt(self, action: str = "terminate", at: str = "2026-01-01T00:02:00Z") -> None:
        """A spot interruption notice for the instances that hold a token now."""
        self.set_notice(INSTANCE_ACTION, {"action": action, "time": at})

    def rebalance(self, at: str = "2026-01-01T00:00:00Z") -> None:
        """A rebalance recommendation for the instances that hold a token now."""
        self.set_notice(REBALANCE, {"noticeTime": at})

    def revoke_tokens(self) -> None:
        """Every token issued so far is refused (401) from now on."""
        with self._lock:
            self._valid.clear()

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return sum(1 for m, p, _ in self.requests if (m, p) == (method, path))
