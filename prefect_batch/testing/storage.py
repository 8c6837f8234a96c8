"""Real storage endpoints on loopback for tests: moto's S3 server and a small HTTP file server.

:func:`moto_s3_server` runs moto in server mode on 127.0.0.1 (an S3 HTTP endpoint that boto3,
presigned URLs and the node agent talk to like any other). :func:`http_file_server` serves a
directory over plain HTTP on 127.0.0.1, with paths that fail on purpose: ``/denied/...``
answers 403, ``/slow/...`` waits before answering (a download timeout) and ``PUT`` stores the
body under ``put/`` (an upload target). Nothing here listens on any other address.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect_batch.providers.storage import ObjectStorage

__all__ = ["HttpFileServer", "S3Endpoint", "http_file_server", "moto_s3_server"]

ACCESS_KEY_ID = "testing-access-key"
SECRET_ACCESS_KEY = "testing-secret-key"  # moto accepts any; never a real credential
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Endpoint:
    """A running S3 endpoint: its URL and the credentials that work there."""

    url: str
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = SECRET_ACCESS_KEY
    region: str = REGION

    def client(self) -> Any:
        """A boto3 S3 client of this endpoint."""
        return self.storage().client

    def storage(self, **overrides: Any) -> ObjectStorage:
        """The :class:`ObjectStorage` a batch service signs URLs with for this endpoint."""
        return ObjectStorage(
            endpoint_url=self.url,
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            **overrides,
        )


@contextmanager
def moto_s3_server(
    host: str = "127.0.0.1", *, buckets: tuple[str, ...] = ()
) -> Iterator[S3Endpoint]:
    """moto's S3 in server mode on ``host`` (loopback), on a free port, with ``buckets`` made."""
    if not host.startswith("127."):
        raise ValueError("test storage listens on loopback only")
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
    server.start()
    try:
        bound_host, port = server.get_host_and_port()
        endpoint = S3Endpoint(f"http://{bound_host}:{port}")
        for bucket in buckets:
            endpoint.client().create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()


@dataclass
class HttpFileServer:
    """A directory served over HTTP: ``url(name)`` is a file's URL."""

    base_url: str
    directory: Path
    slow_seconds: float

    def url(self, name: str) -> str:
        """The URL of ``name`` (a path below the directory, or under ``denied/``/``slow/``)."""
        return f"{self.base_url}/{name}"


class _Handler(http.server.SimpleHTTPRequestHandler):
    server_version = "prefect-batch-test"
    slow_seconds = 5.0

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def do_GET(self) -> None:
        if self.path.startswith("/denied/"):
            self.send_error(403, "Forbidden")
            return
        if self.path.startswith("/slow/"):
            time.sleep(self.slow_seconds)
            self.path = self.path[len("/slow") :]
        super().do_GET()

    def do_PUT(self) -> None:
        if self.path.startswith("/denied/"):
            self.send_error(403, "Forbidden")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        name = self.path.split("?", 1)[0].lstrip("/")
        target = Path(self.directory, "put", *[p for p in name.split("/") if p not in ("", "..")])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextmanager
def http_file_server(
    directory: str | Path, *, host: str = "127.0.0.1", slow_seconds: float = 5.0
) -> Iterator[HttpFileServer]:
    """Serve ``directory`` on ``host`` (loopback) in a thread; see the module docstring."""
    if not host.startswith("127."):
        raise ValueError("test servers listen on loopback only")
    directory = Path(directory)

    class Handler(_Handler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)

    Handler.slow_seconds = slow_seconds

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            return  # a client that timed out on /slow/ closed its end: expected

    server = Server((host, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="http-file-server", daemon=True)
    thread.start()
    try:
        yield HttpFileServer(f"http://{host}:{server.server_address[1]}", directory, slow_seconds)
    finally:
        server.shutdown()
        server.server_close()
