"""The application factory: ``create_app(store, engine=None)``.

The app serves Azure Batch's REST paths for every account in the store, each request signed
with SharedKey (``api/auth.py``). When given an engine it starts it with the app and stops it on
shutdown (``manage_engine``), and every accepted change wakes it. ``GET /openapi.json`` (and
``/docs``) describe the surface without authentication; every other path needs a valid
signature, except the web page under ``/ui`` (``prefect_batch.ui``), which signs in with an
account's key and keeps a signed session cookie. Answers carry Azure's ``request-id``
header, and echo ``client-request-id`` when the client sends ``return-client-request-id: true``;
a write retried with the same ``client-request-id`` is answered, not done again
(``api/idempotency.py``).

What it does not do: listen on a socket (``prefect-batch server start`` runs it with uvicorn), or
hold any state beyond the store and the engine.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prefect_batch.api.auth import Authenticator, KeyRing
from prefect_batch.api.context import API_VERSIONS
from prefect_batch.api.errors import install_error_handlers
from prefect_batch.api.idempotency import IdempotencyMiddleware, install_replay_handler
from prefect_batch.api.routes import (
    certificates,
    files,
    jobs,
    nodes,
    nodesources,
    pools,
    schedules,
    tasks,
)
from prefect_batch.api.routes._spec import BODY_MODELS
from prefect_batch.store import Store

if TYPE_CHECKING:
    from prefect_batch.service.engine import Engine

__all__ = ["create_app"]

DESCRIPTION = f"""
Azure Batch's data-plane REST API (api-version {", ".join(API_VERSIONS)}), served by
prefect-batch on machines you own or rent. The official `azure-batch` SDK works against it with
`BatchClient(endpoint, AzureNamedKeyCredential(account, key))`.

Every request is signed with SharedKey (`Authorization: SharedKey <account>:<signature>`,
`ocp-date` within 15 minutes); an account sees only its own pools, jobs and files. Errors use
Azure's body (`code`, `message`, `values`). Lists page with `maxresults` and `odata.nextLink` and
accept `$filter` and `$select`. Operations marked **Not implemented in this version** answer 501
`NotImplemented`; `x-prefect-batch-implemented` tells the same per operation.
"""


def _package_version() -> str:
    try:
        return version("prefect-batch")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


class RequestIdMiddleware:
    """Adds Azure's ``request-id`` (and the echoed ``client-request-id``) to every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        extra = [(b"request-id", str(uuid.uuid4()).encode())]
        client_id = headers.get(b"client-request-id")
        if client_id and headers.get(b"return-client-request-id", b"").lower() == b"true":
            extra.append((b"client-request-id", client_id))

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers") or []) + extra
            await send(message)

        await self.app(scope, receive, send_with_ids)


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        # Request bodies are validated by the service (same errors as the embedded client), so
        # FastAPI does not know their models: publish them here.
        _, defs = models_json_schema(
            [(m, "validation") for m in BODY_MODELS.values()],
            ref_template="#/components/schemas/{model}",
        )
        for name, schema in defs.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        # FastAPI documents 422 for parameter errors; this API answers 400 with Azure's body.
        for path in doc.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = doc
        return doc

    return build


def create_app(
    store: Store,
    engine: Engine | None = None,
    *,
    account_url: str | None = None,
    manage_engine: bool = True,
    clock: Callable[[], float] = time.time,
    ssh_files_dir: Path | None = None,
    cloud_accounts: Collection[str] = (),
    ui: bool = True,
) -> FastAPI:
    """The Azure Batch REST application over ``store``.

    Args:
        store: The batch database (accounts, pools, jobs, tasks).
        engine: An engine to wake on every change (and, with ``manage_engine``, to start with
            the app and stop on shutdown). Without one, nothing runs tasks in this process.
        account_url: The URL tasks see as ``AZ_BATCH_ACCOUNT_URL`` (the server's address).
        manage_engine: Start and stop ``engine`` with the app.
        clock: Wall clock for the 15-minute ``ocp-date`` window (tests move it).
        ssh_files_dir: The only directory whose files SSH host groups registered through the
            API may name as key or known_hosts file (the server reads and writes them); None
            allows any path (for tests and trusted deployments).
        cloud_accounts: The accounts that may register node sources that act with this
            server's cloud credentials (EC2 templates); no other may.
        ui: Serve the web page under ``/ui`` (``prefect_batch.ui``).
    """

    def account_seen(name: str) -> None:
        # Tasks of this account learn the server's URL (AZ_BATCH_ACCOUNT_URL).
        if engine is not None and account_url:
            engine.account_urls.setdefault(name, account_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if engine is not None and manage_engine:
            engine.start()
        try:
            yield
        finally:
            if engine is not None and manage_engine:
                engine.stop()

    app = FastAPI(
        title="prefect-batch",
        version=_package_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.store = store
    app.state.engine = engine
    app.state.ssh_files_dir = ssh_files_dir
    app.state.cloud_accounts = frozenset(cloud_accounts)
    app.state.authenticator = Authenticator(KeyRing(store, on_load=account_seen), clock=clock)
    install_error_handlers(app)
    install_replay_handler(app)
    for module in (pools, nodes, jobs, tasks, files, schedules, nodesources, certificates):
        app.include_router(module.router)
    if ui:
        # The web page (/ui): sign-in with an account's key, then the same service operations.
        from prefect_batch.ui import mount_ui

        mount_ui(app)
    # Inside RequestIdMiddleware: a replayed answer still gets this attempt's own request-id.
    app.add_middleware(IdempotencyMiddleware, store=store)
    app.add_middleware(RequestIdMiddleware)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app
