"""A job hash (rq's fields and ours) read back as a :class:`JobInfo`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from lexigram.tasks.attempts import decode_attempts
from lexigram.tasks.control import JobError, JobInfo, JobState
from lexigram.tasks.job import Job

#: The job's metadata keys are fields with this prefix, each holding a JSON value.
META_PREFIX = "lx_meta."

_BY_STATUS = {
    "queued": JobState.QUEUED,
    "scheduled": JobState.SCHEDULED,
    "started": JobState.RUNNING,
    "finished": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "canceled": JobState.CANCELLED,
    # rq's own words for states lexigram never writes.
    "deferred": JobState.SCHEDULED,
    "stopped": JobState.CANCELLED,
}


def state_of(fields: Mapping[str, str]) -> JobState | None:
    """The state of a job hash (rq's ``status`` refined by our fields); None without one."""
    state = _BY_STATUS.get(fields.get("status", ""))
    if state in (JobState.QUEUED, JobState.SCHEDULED) and fields.get("lx_retrying") == "1":
        return JobState.RETRYING
    if state is JobState.FAILED and fields.get("lx_outcome") == "dead":
        return JobState.DEAD
    return state


def decode_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    """HGETALL's reply (bytes) as text."""
    return {text(key): text(value) for key, value in raw.items()}


def text(value: bytes | str) -> str:
    """A reply item as text (a client may be set to decode replies itself)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def job_info(job_id: str, queue: str, fields: Mapping[str, str]) -> JobInfo | None:
    """The :class:`JobInfo` of a job hash, or None if it holds no job state."""
    state = state_of(fields)
    if state is None:
        return None
    job = _parse(fields.get("data"))
    error = None
    if fields.get("lx_error_type") or fields.get("lx_error_message"):
        error = JobError(fields.get("lx_error_type", ""), fields.get("lx_error_message", ""))
    elif fields.get("lx_reason"):
        error = JobError("", fields["lx_reason"])
    progress = fields.get("lx_progress")
    finished = state.finished
    return JobInfo(
        id=job_id,
        queue=queue,
        task=job.task if job is not None else fields.get("description", ""),
        state=state,
        args=list(job.args) if job is not None else [],
        kwargs=dict(job.kwargs) if job is not None else {},
        attempt=_int(fields.get("lx_attempt")),
        max_attempts=(job.max_retries + 1) if job is not None else 1,
        priority=job.priority if job is not None else _int(fields.get("lx_priority")),
        enqueued_at=_time(fields.get("enqueued_at")),
        run_at=_run_at(state, fields, job),
        started_at=_time(fields.get("started_at")),
        finished_at=_time(fields.get("ended_at")) if finished else None,
        worker_id=None if state is JobState.RUNNING else fields.get("worker_name") or None,
        error=error,
        progress=float(progress) if progress else None,
        progress_message=fields.get("lx_progress_message"),
        meta=_meta(fields),
        cancel_requested=fields.get("lx_cancel") == "1" and not finished,
        trace_id=None if job is None else job.trace_id,
        attempts=tuple(decode_attempts(fields.get("lx_attempts"))),
    )


def _parse(data: str | None) -> Job | None:
    if not data:
        return None
    try:
        return Job.from_json(data)
    except Exception:  # a foreign producer's bad document: shown without its details
        return None


def _int(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


def _time(value: str | None) -> float | None:
    """rq's timestamps (``2026-11-27T21:54:03.123456Z``) as Unix time."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _run_at(state: JobState, fields: Mapping[str, str], job: Job | None) -> float | None:
    """When a delayed job or retry is due (a retry's time is ours, a delayed job's its own)."""
    if fields.get("status") != "scheduled":
        return None
    if state is JobState.RETRYING and fields.get("lx_run_at"):
        return float(fields["lx_run_at"])
    return job.run_at if job is not None else None


def _meta(fields: Mapping[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, value in fields.items():
        if key.startswith(META_PREFIX):
            try:
                meta[key[len(META_PREFIX) :]] = json.loads(value)
            except ValueError:
                meta[key[len(META_PREFIX) :]] = value
    return meta
