"""The pages (GET): overview, jobs, one job, failures, schedules, workers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from lexigram.tasks.control import MAX_ATTEMPTS_KEPT, MAX_TRACEBACK_CHARS, JobInfo, JobState
from lexigram.tasks.dashboard import _forms as forms
from lexigram.tasks.dashboard._app import Dashboard
from lexigram.tasks.dashboard._charts import failure_rate_chart, throughput_chart
from lexigram.tasks.dashboard._sources import dead_letter_queue, scheduler_of
from lexigram.tasks.errors import CapabilityNotSupportedError
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.redact import redact_urls

STATES = [s.value for s in JobState]


@dataclass(frozen=True, slots=True)
class BackendRow:
    name: str
    system: str
    queue: str
    described: str
    primary: bool
    counts: QueueCounts | None
    error: str | None


async def overview(board: Dashboard, request: Request) -> Response:
    await board.may_see(request)
    return await board.render(request, "overview.html", **await _live_context(board))


async def live(board: Dashboard, request: Request) -> Response:
    """The overview's changing part alone: what its script fetches every ``refresh`` seconds."""
    await board.may_see(request)
    return await board.render(request, "_live.html", **await _live_context(board))


async def _live_context(board: Dashboard) -> dict[str, Any]:
    sample = await board.sampler.current()
    provider = board.provider
    rows = [
        BackendRow(
            name=name,
            system=queue.system,
            queue=queue.queue_name,
            described=redact_urls(repr(queue)),
            primary=name == provider.primary,
            counts=sample.counts.get(name),
            error=sample.errors.get(name),
        )
        for name, queue in provider.backends.items()
    ]
    minutes = board.sampler.throughput.hour(sample.at)
    return {
        "rows": rows,
        "sample": sample,
        "workers": sample.workers or [],
        "workers_error": sample.errors.get("workers"),
        "read_error": sample.errors.get("read"),
        "throughput": throughput_chart(minutes),
        "failure_rate": failure_rate_chart(minutes),
    }


async def jobs(board: Dashboard, request: Request) -> Response:
    await board.may_see(request)
    await board.ensure_connected()
    query = request.query_params
    wanted_id = forms.optional_text(query.get("id"))
    if wanted_id is not None:
        dlq = dead_letter_queue(board.provider)
        if await board.provider.get_job(wanted_id) is not None or (
            dlq is not None and await dlq.get(wanted_id) is not None
        ):
            return RedirectResponse(board.url(request, "job", job_id=wanted_id), 303)
        raise HTTPException(404, f"No job with id {wanted_id!r} is known.")
    backend = forms.optional_text(query.get("backend")) or board.provider.primary
    if backend not in board.provider.backends:
        raise forms.BadInput(
            f"backend: {backend!r} is not a backend of this provider "
            f"({', '.join(board.provider.backends)})"
        )
    state = forms.state(query.get("state"))
    task = forms.optional_text(query.get("task"))
    since = forms.moment("since", query.get("since"))
    until = forms.moment("until", query.get("until"))
    cursor = forms.optional_text(query.get("cursor"))
    filters = {
        "backend": backend if len(board.provider.backends) > 1 else None,
        "state": state.value if state else None,
        "task": task,
        "since": forms.moment_input(since) if since is not None else None,
        "until": forms.moment_input(until) if until is not None else None,
    }
    listed: list[JobInfo] = []
    next_cursor: str | None = None
    problem: str | None = None
    try:
        page = await board.provider.jobs(
            state=state, task=task, limit=board.settings.page_size, cursor=cursor, backend=backend
        )
        listed, next_cursor = page.jobs, page.cursor
    except CapabilityNotSupportedError as exc:
        problem = str(exc)
    except ValueError as exc:  # a cursor of another listing
        raise forms.BadInput(f"cursor: {exc}") from None
    shown = [j for j in listed if _within(j, since, until)]
    return await board.render(
        request,
        "jobs.html",
        jobs=shown,
        hidden_by_time=len(listed) - len(shown),
        filters=filters,
        states=STATES,
        backends=list(board.provider.backends),
        backend=backend,
        next_cursor=next_cursor,
        paged=cursor is not None,
        problem=problem,
    )


def _within(job: JobInfo, since: float | None, until: float | None) -> bool:
    if since is None and until is None:
        return True
    at = job.enqueued_at
    if at is None:
        return False
    return (since is None or at >= since) and (until is None or at < until)


async def job(board: Dashboard, request: Request) -> Response:
    await board.may_see(request)
    await board.ensure_connected()
    job_id = request.path_params["job_id"]
    info = await board.provider.get_job(job_id)
    dlq = dead_letter_queue(board.provider)
    record = await dlq.get(job_id) if dlq is not None else None
    if info is None and record is None:
        raise HTTPException(404, f"No job with id {job_id!r} is known.")
    return await board.render(
        request,
        "job.html",
        job_id=job_id,
        info=info,
        record=record,
        max_attempts_kept=MAX_ATTEMPTS_KEPT,
        max_traceback_chars=MAX_TRACEBACK_CHARS,
        trace_link=board.trace_link(
            (info.trace_id if info is not None else None) or _record_trace(record)
        ),
        can_cancel=info is not None and info.state.pending and not info.cancel_requested,
        can_retry=record is not None
        or (
            info is not None and info.state in (JobState.FAILED, JobState.CANCELLED, JobState.DEAD)
        ),
    )


def _record_trace(record: Any) -> str | None:
    if record is None or record.job is None:
        return None
    trace_id: str | None = getattr(record.job, "trace_id", None)
    return trace_id


async def failures(board: Dashboard, request: Request) -> Response:
    await board.may_see(request)
    dlq = dead_letter_queue(board.provider)
    if dlq is None:
        return await board.render(request, "failures.html", dlq=False)
    query = request.query_params
    criteria = failure_criteria(query)
    offset = forms.whole("offset", query.get("offset"), 0, high=10**9)
    size = board.settings.page_size
    records = await dlq.list(limit=size, offset=offset, newest_first=True, **criteria)
    total = await dlq.count(**criteria)
    shown_filters = {
        **criteria,
        "since": forms.moment_input(criteria["since"]) if criteria["since"] else None,
        "until": forms.moment_input(criteria["until"]) if criteria["until"] else None,
    }
    return await board.render(
        request,
        "failures.html",
        dlq=True,
        records=records,
        total=total,
        offset=offset,
        size=size,
        filters=shown_filters,
        filtered=any(v is not None for v in criteria.values()),
    )


def failure_criteria(source: Any) -> dict[str, Any]:
    """The DLQ filter fields of a query string or form (``FailureFilter``'s names)."""
    return {
        "task": forms.optional_text(source.get("task")),
        "queue": forms.optional_text(source.get("queue")),
        "error_type": forms.optional_text(source.get("error_type")),
        "since": forms.moment("since", source.get("since")),
        "until": forms.moment("until", source.get("until")),
    }


async def schedules(board: Dashboard, request: Request) -> Response:
    await board.may_see(request)
    scheduler = scheduler_of(board.provider)
    if scheduler is None:
        return await board.render(request, "schedules.html", scheduler=False, templates=[])
    listing = await scheduler.list()
    now = time.time()
    rows = [(info, [] if info.paused else info.template.next_runs(now, 3)) for info in listing]
    return await board.render(request, "schedules.html", scheduler=True, templates=rows)


async def workers(board: Dashboard, request: Request) -> Response:
    await board.may_see(request)
    await board.ensure_connected()
    try:
        found = await board.provider.workers()
        problem = None
    except CapabilityNotSupportedError as exc:
        found, problem = [], str(exc)
    return await board.render(
        request, "workers.html", workers=found, problem=problem, now=time.time()
    )
