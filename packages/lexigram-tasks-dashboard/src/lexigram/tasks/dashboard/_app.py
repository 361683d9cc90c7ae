"""The ASGI application: settings, rendering, links that work wherever it is mounted.

:func:`dashboard` returns a Starlette application. Every link is built from
the route names and the request's ``root_path``, so the same app works alone
at ``/`` and mounted under any prefix (``app.mount("/tasks", dashboard(p))``).
Pages are rendered on the server by Jinja2 with autoescaping on; the CSS and
the one small script are static files of this package.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lexigram.tasks.dashboard import _csrf as csrf
from lexigram.tasks.dashboard._access import Access, AuthHook, Gate
from lexigram.tasks.dashboard._forms import BadInput
from lexigram.tasks.dashboard._history import Sampler
from lexigram.tasks.dashboard._sources import dead_letter_queue, scheduler_of
from lexigram.tasks.errors import BackendConnectionError
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.redact import redact_urls

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

#: Sent with every page: nothing but this app's own files may load or run.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "SAMEORIGIN",
}

Handler = Callable[["Dashboard", Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Settings:
    """How the dashboard behaves; see :func:`lexigram.tasks.dashboard.dashboard`."""

    allow_actions: bool = False
    trace_url: str | None = None
    refresh: float = 5.0
    page_size: int = 50
    title: str = "lexigram-tasks"

    def __post_init__(self) -> None:
        if self.trace_url is not None:
            if "{trace_id}" not in self.trace_url:
                raise ValueError(
                    f"trace_url must contain {{trace_id}}, e.g. "
                    f"'http://jaeger:16686/trace/{{trace_id}}'; got {self.trace_url!r}"
                )
            if not self.trace_url.startswith(("http://", "https://", "/")):
                raise ValueError(
                    f"trace_url must be an http(s) URL or a path starting with '/', "
                    f"got {self.trace_url!r}"
                )
        if not self.refresh > 0:
            raise ValueError(f"refresh must be > 0 seconds, got {self.refresh!r}")
        if not 1 <= self.page_size <= 1000:
            raise ValueError(f"page_size must be between 1 and 1000, got {self.page_size!r}")


class Dashboard:
    """The state behind the routes: the provider, the settings, the sampler, the templates."""

    def __init__(self, provider: TaskProvider, settings: Settings, auth: AuthHook | None) -> None:
        if not isinstance(provider, TaskProvider):
            raise TypeError(f"dashboard() needs a TaskProvider, got {type(provider).__name__}")
        self.provider = provider
        self.settings = settings
        self.gate = Gate(auth, settings.allow_actions)
        # The worker list (for the charts) changes slowly: read it every third refresh.
        self.sampler = Sampler(provider, settings.refresh, 3 * settings.refresh)
        self.env = _environment()
        self._connect_lock = asyncio.Lock()
        self.app: Starlette | None = None

    # -- links ---------------------------------------------------------------------

    def url(
        self, request: Request, name: str, /, query: Mapping[str, Any] | None = None, **path: Any
    ) -> str:
        """The path of route ``name`` under this app's mount point, with ``query``."""
        assert self.app is not None
        found = self.app.router.url_path_for(name, **path)
        prefix = str(request.scope.get("root_path", "")).rstrip("/")
        link = prefix + str(found)
        kept = {k: v for k, v in (query or {}).items() if v not in (None, "")}
        return f"{link}?{urlencode(kept, doseq=True)}" if kept else link

    def trace_link(self, trace_id: str | None) -> str | None:
        if not trace_id or self.settings.trace_url is None:
            return None
        return self.settings.trace_url.replace("{trace_id}", quote(trace_id, safe=""))

    # -- access --------------------------------------------------------------------

    async def ensure_connected(self) -> None:
        """Connect the provider once (no workers start), for every request sharing it."""
        async with self._connect_lock:
            await self.provider.connect()

    async def may_see(self, request: Request) -> None:
        if not await self.gate.allows(request, Access.SEE):
            raise HTTPException(403, "You may not see this dashboard.")

    async def action_form(self, request: Request) -> FormData:
        """The form of a POST that may act; 403 without actions, rights or a valid CSRF token."""
        if not self.settings.allow_actions:
            raise HTTPException(
                403, "Actions are turned off (dashboard(..., allow_actions=True) turns them on)."
            )
        if not await self.gate.allows(request, Access.ACT):
            raise HTTPException(403, "You may look but not act.")
        form = await request.form()
        if not csrf.valid(request, form.get(csrf.FIELD)):
            raise HTTPException(
                403, "The form's CSRF token is missing or wrong: reload the page and try again."
            )
        return form

    # -- rendering -------------------------------------------------------------------

    async def render(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        token, new = csrf.token_for(request)
        can_act = self.settings.allow_actions and await self.gate.allows(request, Access.ACT)
        page = self.env.get_template(template).render(
            request=request,
            url=lambda name, query=None, **path: self.url(request, name, query, **path),
            csrf_field=csrf.FIELD,
            csrf_token=token,
            can_act=can_act,
            settings=self.settings,
            has_dlq=dead_letter_queue(self.provider) is not None,
            has_scheduler=scheduler_of(self.provider) is not None,
            notice=_notice(request),
            **context,
        )
        response = HTMLResponse(page, status_code=status)
        if new:
            csrf.set_cookie(response, token, str(request.scope.get("root_path", "")) or "/")
        return response

    async def error_page(self, request: Request, status: int, message: str) -> HTMLResponse:
        return await self.render(request, "error.html", status, code=status, message=message)


#: Messages shown after an action (chosen by code: a link cannot inject text).
NOTICES = {
    "cancelled": "Job cancelled: it will not run.",
    "requested": "Cancellation sent: the worker running it stops it.",
    "finished": "The job had already finished: nothing changed.",
    "not_found": "No backend knows that job any more.",
    "retried": "A new job was enqueued to run it again (it has a new id).",
    "replayed": "Replayed {count} record(s): their jobs are back on their queues.",
    "purged": "Deleted {count} record(s).",
    "paused": "Schedule paused: no scheduler fires it until resumed.",
    "resumed": "Schedule resumed: it fires from its next tick.",
    "triggered": "Schedule triggered: one job was enqueued now.",
    "nothing": "Nothing was selected.",
}


def _notice(request: Request) -> str | None:
    template = NOTICES.get(request.query_params.get("notice", ""))
    if template is None:
        return None
    count = request.query_params.get("count", "0")
    return template.format(count=int(count) if count.isdigit() else 0)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["ago"] = _ago
    env.filters["pretty"] = _pretty
    env.filters["percent"] = lambda v: "" if v is None else f"{v:.0%}"
    env.filters["seconds"] = _seconds
    return env


def _seconds(value: float | None) -> str:
    """A duration: milliseconds under a second, else seconds, minutes, hours."""
    if value is None:
        return "-"
    return (
        f"{value * 1000:.0f} ms" if value < 1 else _span(value) if value >= 60 else f"{value:.1f}s"
    )


def _when(timestamp: float | datetime | None) -> str:
    if timestamp is None:
        return "-"
    if isinstance(timestamp, datetime):
        return timestamp.isoformat(sep=" ", timespec="seconds")
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    seconds = time.time() - timestamp
    if seconds < 0:
        return f"in {_span(-seconds)}"
    return f"{_span(seconds)} ago"


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _pretty(value: Any) -> str:
    return redact_urls(json.dumps(value, indent=2, ensure_ascii=False, default=repr))


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


def build_app(board: Dashboard, routes: Sequence[tuple[str, str, Handler, list[str]]]) -> Starlette:
    """The Starlette app serving ``routes`` (path, name, handler, methods) and the static files."""

    def bind(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await handler(board, request)

        return endpoint

    table: list[BaseRoute] = [
        Route(path, bind(handler), name=name, methods=methods)
        for path, name, handler, methods in routes
    ]
    table.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        response = await board.error_page(request, exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    async def bad_input(request: Request, exc: Exception) -> Response:
        return await board.error_page(request, 400, str(exc))

    async def unavailable(request: Request, exc: Exception) -> Response:
        # Connection errors may quote a URL: never with its password.
        message = redact_urls(f"A backend did not answer: {type(exc).__name__}: {exc}")
        return await board.error_page(request, 503, message)

    app = Starlette(
        routes=table,
        exception_handlers={
            HTTPException: http_error,
            BadInput: bad_input,
            BackendConnectionError: unavailable,
            ConnectionError: unavailable,
            TimeoutError: unavailable,
        },
    )
    app.add_middleware(SecurityHeaders)
    app.state.dashboard = board
    board.app = app
    return app
