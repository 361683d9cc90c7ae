"""The actions (POST), each behind ``allow_actions``, the auth hook's ACT answer and CSRF.

Each answers with a redirect (303) to the page it came from, carrying a
notice code; the page then shows what happened.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from lexigram.tasks.control import JobInfo, JobState
from lexigram.tasks.dashboard._app import Dashboard
from lexigram.tasks.dashboard._forms import BadInput
from lexigram.tasks.dashboard._pages import failure_criteria
from lexigram.tasks.dashboard._sources import dead_letter_queue, scheduler_of
from lexigram.tasks.job import Job

#: Header a job enqueued by "retry now" carries: the id of the job it repeats.
RETRY_OF_HEADER = "lexigram-retry-of"


def _back(
    board: Dashboard,
    request: Request,
    name: str,
    notice: str,
    count: int | None = None,
    **path: str,
) -> Response:
    query: dict[str, object] = {"notice": notice}
    if count is not None:
        query["count"] = count
    return RedirectResponse(board.url(request, name, query, **path), status_code=303)


async def cancel_job(board: Dashboard, request: Request) -> Response:
    await board.action_form(request)
    await board.ensure_connected()
    job_id = request.path_params["job_id"]
    outcome = await board.provider.cancel(job_id)
    return _back(board, request, "job", outcome.value, job_id=job_id)


async def retry_job(board: Dashboard, request: Request) -> Response:
    """Run a finished job again: its dead letter record is replayed, else a copy is enqueued."""
    await board.action_form(request)
    await board.ensure_connected()
    job_id = request.path_params["job_id"]
    dlq = dead_letter_queue(board.provider)
    if dlq is not None and await dlq.get(job_id) is not None:
        handle = await dlq.replay(job_id, board.provider)
        if handle is not None:
            return _back(board, request, "job", "retried", job_id=handle.id)
    info = await board.provider.get_job(job_id)
    if info is None:
        raise HTTPException(404, f"No job with id {job_id!r} is known.")
    if info.state not in (JobState.FAILED, JobState.CANCELLED, JobState.DEAD):
        raise BadInput(
            f"job {job_id} is {info.state.value}: only a failed, cancelled or dead job is retried"
        )
    handle = await board.provider.enqueue_job(_copy(info), backend=_backend_of(board, info))
    return _back(board, request, "job", "retried", job_id=handle.id)


def _copy(info: JobInfo) -> Job:
    return Job(
        task=info.task,
        args=list(info.args),
        kwargs=dict(info.kwargs),
        queue=info.queue,
        max_retries=max(info.max_attempts - 1, 0),
        priority=info.priority,
        headers={RETRY_OF_HEADER: info.id},
    )


def _backend_of(board: Dashboard, info: JobInfo) -> str | None:
    for name, queue in board.provider.backends.items():
        if queue.queue_name == info.queue:
            return name
    return None


async def replay_failures(board: Dashboard, request: Request) -> Response:
    """Replay the checked records, or (``scope=all``) every record the filters match."""
    form = await board.action_form(request)
    dlq = dead_letter_queue(board.provider)
    if dlq is None:
        raise HTTPException(404, "This provider has no dead letter queue.")
    await board.ensure_connected()
    if form.get("scope") == "all":
        report = await dlq.replay_many(board.provider, **failure_criteria(form))
        return _back(board, request, "failures", "replayed", len(report.replayed))
    ids = [str(v) for v in form.getlist("ids") if v]
    if not ids:
        return _back(board, request, "failures", "nothing")
    replayed = 0
    for record_id in ids:
        if await dlq.replay(record_id, board.provider) is not None:
            replayed += 1
    return _back(board, request, "failures", "replayed", replayed)


async def purge_failures(board: Dashboard, request: Request) -> Response:
    """Delete the checked records, or (``scope=all``) every record the filters match."""
    form = await board.action_form(request)
    dlq = dead_letter_queue(board.provider)
    if dlq is None:
        raise HTTPException(404, "This provider has no dead letter queue.")
    if form.get("scope") == "all":
        removed = await dlq.purge(**failure_criteria(form))
        return _back(board, request, "failures", "purged", removed)
    ids = [str(v) for v in form.getlist("ids") if v]
    if not ids:
        return _back(board, request, "failures", "nothing")
    removed = sum([1 for record_id in ids if await dlq.delete(record_id)])
    return _back(board, request, "failures", "purged", removed)


async def schedule_action(board: Dashboard, request: Request) -> Response:
    """Pause, resume or trigger one template (form fields ``name`` and ``op``)."""
    form = await board.action_form(request)
    scheduler = scheduler_of(board.provider)
    if scheduler is None:
        raise HTTPException(404, "This provider has no scheduler.")
    name, op = str(form.get("name") or ""), str(form.get("op") or "")
    if op not in ("pause", "resume", "trigger"):
        raise BadInput(f"op: {op!r} is not one of pause, resume, trigger")
    from lexigram.tasks.scheduler import TemplateNotFoundError

    try:
        if op == "pause":
            await scheduler.pause(name)
        elif op == "resume":
            await scheduler.resume(name)
        else:
            await board.ensure_connected()
            await scheduler.trigger(name)
    except TemplateNotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    return _back(
        board, request, "schedules", {"pause": "paused", "resume": "resumed"}.get(op, "triggered")
    )
