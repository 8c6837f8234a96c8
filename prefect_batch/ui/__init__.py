"""The web page: pools, nodes, jobs and tasks as Azure's Batch Explorer shows them.

Plain server-rendered HTML (Jinja2 templates in ``templates/``) with one small script
(``static/ui.js``) that polls the page's own JSON: a pool's heatmap of nodes, a job's progress,
a running task's output. No build step; the templates and assets ship as package data.

* :func:`mount_ui` adds the page under ``/ui`` to an app (``api.create_app`` does, so
  ``prefect-batch server start`` serves it beside the REST API);
* :func:`create_ui_app` is an app of the page alone over a store (``prefect-batch ui``), with or
  without an engine.

Modules: ``session.py`` (sign-in, signed session cookies, CSRF tokens), ``views.py`` (what a
page shows, read through one account's ``BatchService``), ``routes.py`` (the router, rendering,
security headers, actions), ``pages.py`` (the pages, JSON and actions).

What it does not do: bypass SharedKey accounts (sign-in takes an account's key, and every read
goes through the service bound to that account) or keep any state besides the signing secret.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.responses import RedirectResponse, Response

from prefect_batch.store import Store

if TYPE_CHECKING:
    from prefect_batch.service.engine import Engine

__all__ = ["create_ui_app", "mount_ui"]


def mount_ui(app: FastAPI, *, secret: bytes | None = None, **session_options: Any) -> None:
    """Serve the web page under ``/ui`` of ``app`` (which has ``state.store``).

    Uses the app's SharedKey key ring when it has one (``state.authenticator``), so a rotated
    key ends the sessions signed in with it as it ends SharedKey requests.
    """
    from prefect_batch.api.auth import KeyRing
    from prefect_batch.ui import pages  # noqa: F401 - registers the pages on the router
    from prefect_batch.ui.routes import router
    from prefect_batch.ui.session import Sessions

    authenticator = getattr(app.state, "authenticator", None)
    keyring = authenticator.keyring if authenticator is not None else KeyRing(app.state.store)
    app.state.ui_sessions = Sessions(keyring, secret=secret, **session_options)
    app.include_router(router)


def create_ui_app(
    store: Store, engine: Engine | None = None, *, secret: bytes | None = None, **options: Any
) -> FastAPI:
    """An app serving only the web page over ``store`` (``/`` redirects to ``/ui``).

    With an engine, it is started and stopped with the app, and actions wake it.
    """

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if engine is not None:
            engine.start()
        try:
            yield
        finally:
            if engine is not None:
                engine.stop()

    app = FastAPI(
        title="prefect-batch UI",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.store = store
    app.state.engine = engine
    mount_ui(app, secret=secret, **options)

    @app.get("/", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse("/ui/pools", status_code=303)

    return app
