"""The web page's routes under ``/ui``: pages, the JSON its script polls, and the actions.

Every page and JSON answer needs a signed-in session (``session.py``); without one a page
redirects to the sign-in form and JSON answers 401. Each request gets a ``BatchService`` bound to
the session's account, so the page sees and changes only that account's pools, jobs and files,
through the same operations as the REST API. Actions (resize a pool, reboot or remove a node,
terminate a job or task, reactivate a task) are POSTs whose form carries the session's CSRF
token; one without it (or with another session's) is refused with 403 and changes nothing. An
error of the service (``PoolNotFound``, ``OperationInvalidForCurrentState``...) shows as a page
with its code, message and status.

Answers carry a strict Content-Security-Policy (scripts and styles only from ``/ui/static``),
``X-Content-Type-Options: nosniff``, ``Referrer-Policy`` and ``Cache-Control: no-store``; file
downloads are ``application/octet-stream`` attachments, so a task's HTML output is never rendered
on this origin. Templates escape every value (Jinja2 autoescape) and the script writes output
with ``textContent``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from functools import wraps
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from prefect_batch.exceptions import BatchServiceError
from prefect_batch.service import BatchService
from prefect_batch.ui import views
from prefect_batch.ui.session import COOKIE_NAME, Session, Sessions

__all__ = ["PREFIX", "router"]

PREFIX = "/ui"

router = APIRouter(prefix=PREFIX, include_in_schema=False)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

STATIC = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}

templates = Environment(
    loader=PackageLoader("prefect_batch.ui", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


class SignInRequired(Exception):
    """No valid session: pages redirect to the sign-in form, JSON answers 401."""


def _sessions(request: Request) -> Sessions:
    return request.app.state.ui_sessions


def _session(request: Request) -> Session:
    session = _sessions(request).check(request.cookies.get(COOKIE_NAME))
    if session is None:
        raise SignInRequired
    return session


def _service(request: Request, session: Session) -> BatchService:
    state = request.app.state
    engine = getattr(state, "engine", None)
    return BatchService(
        state.store,
        session.account,
        base_url=str(request.base_url).rstrip("/"),
        wake=engine.wake if engine is not None else None,
        cloud_accounts=getattr(state, "cloud_accounts", ()),
    )


def _headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def render(
    request: Request, name: str, status_code: int = 200, session: Session | None = None, **data: Any
) -> Response:
    """A template rendered with the page's common values (account, CSRF token, prefix)."""
    context = {
        "prefix": PREFIX,
        "account": session.account if session else None,
        "csrf": _sessions(request).csrf_token(session) if session else None,
        "path": request.url.path,
        "colours": views.NODE_COLOURS,
        "q": lambda value: quote(str(value), safe=""),
        **data,
    }
    html = templates.get_template(name).render(context)
    return _headers(HTMLResponse(html, status_code=status_code))


def page(handler: Callable[..., Response]) -> Callable[..., Response]:
    """A page handler: signed in, with a service; service errors become an error page."""

    @wraps(handler)
    def wrapper(request: Request, **kwargs: Any) -> Response:
        try:
            session = _session(request)
        except SignInRequired:
            target = quote(
                request.url.path + (f"?{request.url.query}" if request.url.query else "")
            )
            return _headers(RedirectResponse(f"{PREFIX}/signin?next={target}", status_code=303))
        svc = _service(request, session)
        try:
            return handler(request, session, svc, **kwargs)
        except BatchServiceError as exc:
            return render(
                request, "error.html", exc.status_code, session, code=exc.code, message=exc.message
            )

    return _route_signature(wrapper, handler)


def _route_signature(wrapper: Callable[..., Any], handler: Callable[..., Any]) -> Any:
    # FastAPI reads a route's parameters from its signature: the handler's, without the
    # session and service the wrapper passes itself.
    sig = inspect.signature(handler, eval_str=True)
    params = [p for name, p in sig.parameters.items() if name not in ("session", "svc")]
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper


def api(handler: Callable[..., Any]) -> Callable[..., Response]:
    """A JSON handler for the page's script: 401 without a session, Azure's error codes."""

    @wraps(handler)
    def wrapper(request: Request, **kwargs: Any) -> Response:
        try:
            session = _session(request)
        except SignInRequired:
            return _headers(JSONResponse({"code": "SignInRequired"}, status_code=401))
        try:
            data = handler(request, session, _service(request, session), **kwargs)
            return _headers(JSONResponse(data))
        except BatchServiceError as exc:
            body = {"code": exc.code, "message": exc.message}
            return _headers(JSONResponse(body, status_code=exc.status_code))

    return _route_signature(wrapper, handler)


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > 64 * 1024:
        return {}
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


async def action(request: Request, run: Callable[[BatchService, dict[str, str]], str]) -> Response:
    """A POST action: signed in, CSRF token checked, ``run`` in a thread; redirect to its page."""
    try:
        session = _session(request)
    except SignInRequired:
        return _headers(Response("Sign in first.", status_code=401, media_type="text/plain"))
    form = await _form(request)
    if not _sessions(request).csrf_ok(session, form.get("csrf")):
        return render(
            request,
            "error.html",
            403,
            session,
            code="InvalidCsrfToken",
            message="The form's CSRF token is missing or wrong; nothing was changed. "
            "Reload the page and try again.",
        )
    svc = _service(request, session)
    try:
        target = await run_in_threadpool(run, svc, form)
    except BatchServiceError as exc:
        return render(
            request, "error.html", exc.status_code, session, code=exc.code, message=exc.message
        )
    return _headers(RedirectResponse(target, status_code=303))


# -- sign-in -------------------------------------------------------------------------------------


def _safe_next(value: str | None) -> str:
    # Only our own pages: never an absolute or protocol-relative URL (open redirect).
    if value and value.startswith(PREFIX + "/") and not value.startswith("//"):
        return value
    return f"{PREFIX}/pools"


@router.get("")
@router.get("/")
def home() -> Response:
    return RedirectResponse(f"{PREFIX}/pools", status_code=303)


@router.get("/signin")
def signin_form(request: Request, next: str | None = None) -> Response:  # noqa: A002
    return render(request, "signin.html", next=_safe_next(next), failed=False)


@router.post("/signin")
async def signin(request: Request) -> Response:
    form = await _form(request)
    target = _safe_next(form.get("next"))
    cookie = await run_in_threadpool(
        _sessions(request).sign_in, form.get("account", ""), form.get("key", "")
    )
    if cookie is None:
        return render(request, "signin.html", 403, next=target, failed=True)
    response = RedirectResponse(target, status_code=303)
    secure = request.url.scheme == "https"
    response.set_cookie(
        COOKIE_NAME,
        cookie,
        max_age=int(_sessions(request).max_age),
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=secure,
    )
    return _headers(response)


@router.post("/signout")
async def signout(request: Request) -> Response:
    def run(_svc: BatchService, _form: dict[str, str]) -> str:
        return f"{PREFIX}/signin"

    response = await action(request, run)
    if response.status_code == 303:
        response.delete_cookie(COOKIE_NAME, path=PREFIX)
    return response


@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        return Response("Not found", status_code=404, media_type="text/plain")
    text = resources.files("prefect_batch.ui").joinpath("static", name).read_text()
    if name == "ui.css":  # the tile colours come from one table (views.NODE_COLOURS)
        text += "".join(f".s-{s}{{background:{c}}}\n" for s, c in views.NODE_COLOURS.items())
    response = Response(text, media_type=STATIC[name])
    response.headers["Cache-Control"] = "max-age=300"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


# -- file downloads --------------------------------------------------------------------------------

DOWNLOAD_CHUNK = 1024 * 1024


def download(name: str, size: int, read: Callable[[int, int], bytes]) -> Response:
    """A file as an attachment, read in chunks (never rendered as a page of this origin)."""

    def chunks() -> Iterator[bytes]:
        offset = 0
        while offset < size:
            data = read(offset, min(DOWNLOAD_CHUNK, size - offset))
            if not data:
                return
            offset += len(data)
            yield data

    filename = quote(name.rsplit("/", 1)[-1] or "file", safe="")
    response = StreamingResponse(chunks(), media_type="application/octet-stream")
    response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{filename}"
    response.headers["Content-Length"] = str(size)
    return _headers(response)


def file_size(props: Any) -> int:
    """A file's size from its properties (0 when unknown)."""
    return (props.properties.content_length if props.properties else None) or 0


def now() -> float:
    """Wall clock for the chart's time axis."""
    return time.time()
