"""lexigram.tasks.dashboard: a web dashboard for queues, jobs, failures, schedules and workers.

``dashboard(provider)`` is an ASGI application: mount it in any ASGI app
(``app.mount("/tasks", dashboard(provider))``) or serve it alone with
``lexigram-tasks dashboard APP``. It reads through the provider's job-control
API, its dead letter queue and its scheduler; it changes nothing unless
``allow_actions=True``. See docs/dashboard.md.
"""

from __future__ import annotations

from starlette.applications import Starlette

from lexigram.tasks.dashboard import _actions, _pages
from lexigram.tasks.dashboard._access import Access, AuthHook
from lexigram.tasks.dashboard._app import Dashboard, Settings, build_app
from lexigram.tasks.dashboard._version import __version__
from lexigram.tasks.provider import TaskProvider

__all__ = ["Access", "AuthHook", "__version__", "dashboard"]

_GET, _POST = ["GET"], ["POST"]
_ROUTES = [
    ("/", "overview", _pages.overview, _GET),
    ("/live", "live", _pages.live, _GET),
    ("/jobs", "jobs", _pages.jobs, _GET),
    ("/jobs/{job_id}", "job", _pages.job, _GET),
    ("/jobs/{job_id}/cancel", "cancel_job", _actions.cancel_job, _POST),
    ("/jobs/{job_id}/retry", "retry_job", _actions.retry_job, _POST),
    ("/failures", "failures", _pages.failures, _GET),
    ("/failures/replay", "replay_failures", _actions.replay_failures, _POST),
    ("/failures/purge", "purge_failures", _actions.purge_failures, _POST),
    ("/schedules", "schedules", _pages.schedules, _GET),
    ("/schedules/action", "schedule_action", _actions.schedule_action, _POST),
    ("/workers", "workers", _pages.workers, _GET),
]


def dashboard(
    provider: TaskProvider,
    allow_actions: bool = False,
    auth: AuthHook | None = None,
    *,
    trace_url: str | None = None,
    refresh: float = 5.0,
    page_size: int = 50,
    title: str = "lexigram-tasks",
) -> Starlette:
    """The dashboard of ``provider`` as an ASGI (Starlette) application.

    - ``allow_actions``: show and accept cancel, retry, replay, purge,
      pause/resume and trigger (off: read-only, and every POST is a 403).
    - ``auth``: ``auth(request)`` or ``auth(request, access)`` (``access`` is
      :class:`Access` ``SEE`` or ``ACT``), returning or awaiting a bool;
      False answers 403. It may raise Starlette's ``HTTPException`` (e.g. a
      401 with ``WWW-Authenticate``).
    - ``trace_url``: a link to a trace in your tracing UI, with ``{trace_id}``,
      e.g. ``"http://jaeger:16686/trace/{trace_id}"``.
    - ``refresh``: seconds between the overview's live updates; all open pages
      share one reading of the backends per interval.
    - ``page_size``: jobs and failure records per page.
    """
    settings = Settings(
        allow_actions=allow_actions,
        trace_url=trace_url,
        refresh=refresh,
        page_size=page_size,
        title=title,
    )
    board = Dashboard(provider, settings, auth)
    return build_app(board, _ROUTES)
