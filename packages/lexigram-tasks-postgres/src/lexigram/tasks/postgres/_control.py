"""Job inspection, progress, cancellation and the worker registry of :class:`PostgresTaskQueue`.

The state lives in the job row (see migration 0002); each method here is one
statement. Cancellations of running jobs are published with ``NOTIFY`` on
``<schema>.cancel`` and heard by :meth:`Controlling.watch_cancellations`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from lexigram.tasks.attempts import decode_attempts
from lexigram.tasks.control import (
    CancelCallback,
    CancelOutcome,
    JobError,
    JobInfo,
    JobPage,
    JobState,
    Progress,
    WorkerInfo,
    decode_cursor,
    encode_cursor,
    listening,
)
from lexigram.tasks.errors import MalformedJobError
from lexigram.tasks.job import Job
from lexigram.tasks.postgres._cancel_watch import watch_channel
from lexigram.tasks.postgres._control_sql import ControlStatements, budgeted
from lexigram.tasks.postgres._pools import Pooled
from lexigram.tasks.protocol import Delivery

#: Expired worker entries are deleted at most this often (by a listing).
_PURGE_WORKERS_EVERY = 60.0

_READY_STATES = frozenset({JobState.QUEUED, JobState.SCHEDULED, JobState.RETRYING})
_FINISHED_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.DEAD}
)
#: The first key of a ready listing: from the highest priority, before any run_at.
_READY_START: list[Any] = [9, "-infinity", 0]
#: Rows of its index range a task-filtered page reads at most: a task with few
#: jobs gives short pages (with a cursor) instead of a scan of the whole queue.
SCAN_BUDGET = 2000


class Controlling(Pooled):
    """The primitives of :class:`~lexigram.tasks.control.JobControlProtocol` on PostgreSQL."""

    postgres_dsn: str
    connect_timeout: float
    _control: ControlStatements
    _workers_purged_at: float = 0.0

    # -- inspection ------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobInfo | None:
        """The job's row (the newest, if an enqueue stored it twice); None once it is deleted.

        With ``keep_finished=0`` (the default) an acked job's row is deleted,
        so a finished job is then unknown here (the provider asks the result
        store); dead-lettered and cancelled-before-start rows are kept.
        """
        row = await self._run(lambda c: c.fetchrow(self._control.get_job, self.queue_name, job_id))
        return None if row is None else self._info(row)

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        task: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobPage:
        """A page of this queue's jobs; each page reads one range of an index.

        Queued, scheduled and retrying jobs come in the order they run
        (priority, then due time; queued ones whose lease lapsed first),
        running ones and the unfiltered listing by row id, finished ones by
        when they finished.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        kind = "all" if state is None else state.value
        key = _decode_cursor(cursor, kind)
        if state in _READY_STATES:
            rows, last = await self._list_ready(state, task, limit, key)
        elif state is JobState.RUNNING:  # few rows: read whole, no scan budget
            rows, last = await self._fetch(
                self._control.list_running, task, key[0] if key else 0, limit
            )
        elif state in _FINISHED_STATES:
            start = key or ["-infinity", 0]
            rows, last = await self._scan(
                self._control.list_finished, task, state.value, *start, limit
            )
        else:
            rows, last = await self._scan(self._control.list_all, task, key[0] if key else 0, limit)
        jobs = [self._info(row) for row in rows]
        if last is None:
            return JobPage(jobs, None)
        return JobPage(jobs, _encode_cursor(kind, _key_of(state, last)))

    async def _list_ready(
        self, state: JobState, task: str | None, limit: int, key: list[Any] | None
    ) -> tuple[list[Any], Any | None]:
        statement = self._control.list_ready[state.value]
        if state is JobState.QUEUED and (key is None or key[0] == "lapsed"):
            after = 0 if key is None else int(key[1])
            rows, last = await self._fetch(self._control.list_lapsed, task, after, limit)
            if last is not None:
                return rows, last
            if len(rows) == limit:  # a full page: do ready jobs follow?
                ready, beyond = await self._scan(statement, task, *_READY_START, 1)
                return rows, (rows[-1] if ready or beyond is not None else None)
            ready, last = await self._scan(statement, task, *_READY_START, limit - len(rows))
            return rows + ready, last
        start = _READY_START if key is None else key[1:]
        return await self._scan(statement, task, *start, limit)

    async def _fetch(self, statement: str, *args: Any) -> tuple[list[Any], Any | None]:
        """A page of a listing statement whose last argument is the page size.

        Returns its rows and the row the next page's cursor starts after
        (None when nothing follows).
        """
        *head, limit = args
        rows = await self._run(lambda c: c.fetch(statement, self.queue_name, *head, limit + 1))
        return list(rows[:limit]), (rows[limit - 1] if len(rows) > limit else None)

    async def _scan(
        self, statement: str, task: str | None, *args: Any
    ) -> tuple[list[Any], Any | None]:
        """:meth:`_fetch`, reading at most :data:`SCAN_BUDGET` rows when filtered by task.

        Unfiltered, each row read is shown. Filtered, the statement reads
        the budget's rows of its index range without the filter, the
        matching ones are kept, and when the budget ran out first the last
        row read becomes the cursor: a short page, whatever the queue's size.
        """
        if task is None:
            return await self._fetch(statement, None, *args)
        *head, limit = args
        wrapped = budgeted(statement, params=len(head) + 3)
        rows = await self._run(
            lambda c: c.fetch(wrapped, self.queue_name, None, *head, SCAN_BUDGET, task, limit + 1)
        )
        matched = [row for row in rows if row["task"] == task]
        if len(matched) > limit:
            return matched[:limit], matched[limit - 1]
        if rows and rows[-1]["scan_count"] >= SCAN_BUDGET:
            return matched, rows[-1]
        return matched, None

    def _info(self, row: Any) -> JobInfo:
        try:
            job: Job | None = Job.from_json(row["payload"])
        except MalformedJobError:
            job = None
        error = None
        if row["error_type"] is not None or row["error_message"] is not None:
            error = JobError(row["error_type"] or "", row["error_message"] or "")
        elif row["status"] == "failed" and row["failure_reason"]:  # a dead letter's reason
            error = JobError("", row["failure_reason"])
        return JobInfo(
            id=row["job_id"] or (job.id if job is not None else str(row["id"])),
            queue=self.queue_name,
            task=(job.task if job is not None else row["task"]) or "",
            state=JobState(row["shown_state"]),
            args=[] if job is None else job.args,
            kwargs={} if job is None else job.kwargs,
            attempt=row["attempt"],
            max_attempts=1 if job is None else job.max_retries + 1,
            priority=row["priority"],
            enqueued_at=row["enqueued_at"],
            run_at=row["run_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            error=error,
            progress=row["progress"],
            progress_message=row["progress_message"],
            meta={} if row["meta"] is None else json.loads(row["meta"]),
            cancel_requested=row["cancel_requested"],
            trace_id=None if job is None else job.trace_id,
            worker_id=None if row["status"] == "running" else row.get("worker_id"),
            attempts=tuple(decode_attempts(row.get("attempts"))),
        )

    async def record_progress(self, delivery: Delivery, progress: Progress) -> None:
        """Store progress on the row, only while ``delivery`` still holds its lease."""
        row_id, token = delivery.token
        meta = json.dumps(dict(progress.meta), default=str) if progress.meta else None
        await self._run(
            lambda c: c.execute(
                self._control.record_progress,
                row_id,
                token,
                progress.fraction,
                progress.message,
                meta,
            ),
            settling=True,
        )

    # -- cancellation ----------------------------------------------------------

    async def cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a job in one statement; a running one is marked and its worker notified."""
        row = await self._run(
            lambda c: c.fetchrow(
                self._control.cancel, self.queue_name, job_id, self._control.cancel_channel
            )
        )
        return CancelOutcome(row[0])

    async def watch_cancellations(self, on_cancel: CancelCallback) -> None:
        """Call ``on_cancel(job_id)`` for this queue's cancellations until cancelled.

        ``LISTEN`` on a dedicated connection, opened again after it breaks;
        what is published meanwhile is found by :meth:`cancel_requested`.
        """

        def heard(payload: str) -> None:
            try:
                queue, job_id = json.loads(payload)
            except ValueError:
                return
            if queue == self.queue_name:
                on_cancel(str(job_id))

        await watch_channel(
            self.postgres_dsn,
            self._control.cancel_channel,
            heard,
            timeout=self.connect_timeout,
            application_name=self._application_name,
            on_listening=lambda: listening(on_cancel),
        )

    async def cancel_requested(self, deliveries: Sequence[Delivery]) -> set[str]:
        """Ids of the given running jobs whose cancellation was asked for (one query)."""
        by_row = {d.token[0]: d.job_id for d in deliveries if d.job_id is not None}
        if not by_row:
            return set()
        rows = await self._run(
            lambda c: c.fetch(self._control.cancel_requested, list(by_row)), settling=True
        )
        return {job_id for row in rows if (job_id := by_row.get(row["id"])) is not None}

    # -- workers ---------------------------------------------------------------

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        """Add or refresh the worker's row; it expires ``ttl`` seconds from now."""
        data = json.dumps(info.to_dict())
        await self._run(lambda c: c.execute(self._control.register_worker, info.id, data, ttl))

    async def deregister_worker(self, worker_id: str) -> None:
        await self._run(lambda c: c.execute(self._control.deregister_worker, worker_id))

    async def list_workers(self) -> list[WorkerInfo]:
        """Workers whose rows have not expired (expired rows are deleted now and then)."""
        now = time.monotonic()
        if now - self._workers_purged_at >= _PURGE_WORKERS_EVERY:
            self._workers_purged_at = now
            await self._run(lambda c: c.execute(self._control.purge_workers))
        rows = await self._run(lambda c: c.fetch(self._control.list_workers))
        return [WorkerInfo.from_dict(json.loads(row[0])) for row in rows]


def _key_of(state: JobState | None, row: Any) -> list[Any]:
    """The cursor key of the last row of a page."""
    if state in _READY_STATES:
        if row["status"] == "running":  # a lapsed lease, listed with the queued jobs
            return ["lapsed", row["id"]]
        return ["ready", row["priority"], row["run_at_key"], row["id"]]
    if state in _FINISHED_STATES:
        return [row["finished_at_key"], row["id"]]
    return [row["id"]]


def _encode_cursor(kind: str, key: list[Any]) -> str:
    return encode_cursor([kind, *key])


def _decode_cursor(cursor: str | None, kind: str) -> list[Any] | None:
    if cursor is None:
        return None
    decoded = decode_cursor(cursor)
    if decoded[0] != kind:
        raise ValueError(f"not a cursor of this listing: {cursor!r}")
    return decoded[1:]
