"""RedisJobStateStore: job states on Redis for a backend that cannot look inside its queue.

A hash per job (``NS:job:ID``) and, per queue, sorted sets scored by an
enqueue sequence: every job, one per state, one per task; listing walks one
of them from the cursor's score (``ZRANGEBYSCORE``), so a deep page costs
what the first one does. Each state move is one Lua script (atomic: a
cancel cannot cross a lease). Finished records are purged after
``finished_ttl`` seconds, in batches, from ``NS:finished``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

from lexigram.tasks.attempts import decode_attempts, encode_attempt
from lexigram.tasks.control import (
    MAX_ATTEMPTS_KEPT,
    CancelOutcome,
    JobError,
    JobInfo,
    JobPage,
    JobState,
    Progress,
    WorkerInfo,
    position_cursor,
)
from lexigram.tasks.job import Job
from lexigram.tasks.redis._cluster import hash_tagged
from lexigram.tasks.redis._connection import open_client, reported, resolve_url
from lexigram.tasks.redis._scripts import prelude
from lexigram.tasks.redis._sentinel import SentinelAddress, redact
from lexigram.tasks.state_store import DEFAULT_FINISHED_TTL, Leased, Settled
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

__all__ = ["RedisJobStateStore"]

_SCRIPTS = ("enqueue", "lease", "settle", "cancel", "running", "purge", "forget")
#: Entries read ahead per round trip while a filtered listing skips mismatches.
_SCAN_FACTOR = 4
#: Seconds between two purges of finished records (run on a settle).
PURGE_INTERVAL = 60.0


def _script_sources() -> dict[str, str]:
    folder = files("lexigram.tasks.redis").joinpath("lua")
    common = folder.joinpath("state_common.lua").read_text(encoding="utf-8")
    history = folder.joinpath("history.lua").read_text(encoding="utf-8")
    sources = {}
    for name in _SCRIPTS:
        body = folder.joinpath(f"state_{name}.lua").read_text(encoding="utf-8")
        sources[name] = "\n".join((common, prelude(history, body), body))
    return sources


_SOURCES = _script_sources()


class RedisJobStateStore:
    """Job states, cancellations and the worker registry on Redis.

    ``namespace`` prefixes every key (share a Redis between applications
    with different ones); ``finished_ttl``: seconds a finished job stays
    visible.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        sentinels: Sequence[SentinelAddress] | None = None,
        service_name: str | None = None,
        namespace: str = "lexigram:state",
        finished_ttl: float = DEFAULT_FINISHED_TTL,
    ) -> None:
        redis_url = resolve_url(redis_url, sentinels, service_name)
        if finished_ttl <= 0:
            raise ValueError(f"finished_ttl must be > 0 seconds, got {finished_ttl}")
        self.redis_url = redis_url
        self.namespace = hash_tagged(redis_url, namespace)
        self.finished_ttl = finished_ttl
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._last_purge = time.monotonic()

    def __repr__(self) -> str:
        return f"RedisJobStateStore({redact(self.redis_url)!r}, namespace={self.namespace!r})"

    async def connect(self) -> None:
        if self._client is not None:
            return
        client = await open_client(self.redis_url, purpose="the job state store")
        self._scripts = {name: client.register_script(src) for name, src in _SOURCES.items()}
        self._client = client

    async def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> Redis:
        if self._client is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")
        return self._client

    async def _run(self, name: str, *args: Any) -> Any:
        self.client  # noqa: B018 - raises when not connected
        with reported(self.redis_url):
            # The key routes the call to the master of the namespace's slot (a cluster).
            return await self._scripts[name](keys=[self._key("seq")], args=[self.namespace, *args])

    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    # -- a job's life ----------------------------------------------------------

    async def record_enqueued(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        now = time.time()
        args: list[str] = []
        for job in jobs:
            state = JobState.SCHEDULED if job.run_at and job.run_at > now else JobState.QUEUED
            args += [job.id, _fields(job, state)]
        await self._run("enqueue", *args)

    async def forget(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            await self._run("forget", *job_ids)

    async def record_leased(self, leased: Sequence[Leased]) -> set[str]:
        if not leased:
            return set()
        args: list[Any] = [time.time()]
        for item in leased:
            job = item.job
            args += [job.id, item.attempt, item.lease_until, _fields(job, JobState.QUEUED)]
        dropped = await self._run("lease", *args)
        return {_text(d) for d in dropped}

    async def record_settled(self, settled: Sequence[Settled]) -> None:
        if not settled:
            return
        args: list[Any] = [time.time(), MAX_ATTEMPTS_KEPT]
        for item in settled:
            error, record = item.error, item.attempt_record
            args += [
                item.job_id,
                item.state.value,
                error.type if error else "",
                error.message if error else "",
                "" if item.run_at is None else repr(item.run_at),
                "" if item.attempt is None else item.attempt,
                item.worker_id or "",
                "" if record is None else encode_attempt(record),
            ]
        await self._run("settle", *args)
        if time.monotonic() - self._last_purge > PURGE_INTERVAL:
            self._last_purge = time.monotonic()
            await self.purge_finished()

    async def extend_leases(self, job_ids: Sequence[str], lease_until: float) -> None:
        if job_ids:
            pairs = [value for job_id in job_ids for value in (job_id, repr(lease_until))]
            await self._run("running", "extend", *pairs)

    async def record_progress(self, job_id: str, progress: Progress) -> None:
        report: dict[str, Any] = {}
        if progress.fraction is not None:
            report["fraction"] = repr(float(progress.fraction))
        if progress.message is not None:
            report["message"] = progress.message
        if progress.meta:
            report["meta"] = json.dumps(dict(progress.meta))
        if report:
            await self._run("running", "progress", job_id, json.dumps(report))

    async def purge_finished(self, limit: int = 1000) -> int:
        removed = await self._run("purge", repr(time.time() - self.finished_ttl), limit)
        return int(removed)

    # -- reading ---------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobInfo | None:
        with reported(self.redis_url):
            record = await self.client.hgetall(self._key("job", job_id))
        return _info(job_id, record, time.time()) if record else None

    async def list_jobs(
        self,
        queue: str,
        *,
        state: JobState | None = None,
        task: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobPage:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        after = position_cursor(cursor)
        if task is not None:
            index = self._key("q", queue, "t", task)
        elif state is not None:
            # A scheduled job whose time came reads queued: look in both sets.
            stored = JobState.SCHEDULED if state is JobState.QUEUED else state
            index = self._key("q", queue, "s", stored.value)
            if state is JobState.QUEUED:
                return await self._page_of_two(queue, limit, after)
        else:
            index = self._key("q", queue, "all")
        return await self._page([index], state, limit, after)

    async def _page_of_two(self, queue: str, limit: int, after: int) -> JobPage:
        indexes = [self._key("q", queue, "s", s) for s in ("queued", "scheduled")]
        return await self._page(indexes, JobState.QUEUED, limit, after)

    async def _page(
        self, indexes: list[str], state: JobState | None, limit: int, after: int
    ) -> JobPage:
        """Walk ``indexes`` (merged by score) from ``after``, keeping jobs in ``state``.

        Reads at most ``_SCAN_FACTOR`` batches: a page of a rare filter may be
        short, with a cursor to go on from.
        """
        client = self.client
        now = time.time()
        found: list[JobInfo] = []
        last = after
        batch = limit + 1
        for _ in range(_SCAN_FACTOR):
            with reported(self.redis_url):
                async with client.pipeline(transaction=False) as pipe:
                    for index in indexes:
                        pipe.zrangebyscore(index, f"({last}", "+inf", 0, batch, withscores=True)
                    ranges = await pipe.execute()
            entries = sorted(
                ((int(score), _text(member)) for part in ranges for member, score in part),
                key=lambda entry: entry[0],
            )[:batch]
            if not entries:
                return JobPage(found, None)
            with reported(self.redis_url):
                async with client.pipeline(transaction=False) as pipe:
                    for _, job_id in entries:
                        pipe.hgetall(self._key("job", job_id))
                    records = await pipe.execute()
            for (seq, job_id), record in zip(entries, records, strict=True):
                # A record removed since is skipped (its index entry goes with the purge).
                info = _info(job_id, record, now, attempts=False) if record else None
                if info is not None and (state is None or info.state is state):
                    if len(found) == limit:
                        return JobPage(found, str(last))
                    found.append(info)
                last = seq  # everything up to here is listed or skipped
            if len(entries) < batch:
                return JobPage(found, None)
        return JobPage(found, str(last))

    # -- cancellation ----------------------------------------------------------

    async def cancel(self, job_id: str) -> CancelOutcome:
        outcome = await self._run("cancel", time.time(), job_id)
        return CancelOutcome(_text(outcome))

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        if not job_ids:
            return set()
        with reported(self.redis_url):
            async with self.client.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hget(self._key("job", job_id), "cancel")
                flags = await pipe.execute()
        return {job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag}

    # -- workers ---------------------------------------------------------------

    async def register_worker(self, queue: str, info: WorkerInfo, ttl: float) -> None:
        with reported(self.redis_url):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(self._key("q", queue, "workers"), info.id, json.dumps(info.to_dict()))
                pipe.zadd(self._key("q", queue, "workers", "expiry"), {info.id: time.time() + ttl})
                await pipe.execute()

    async def deregister_worker(self, queue: str, worker_id: str) -> None:
        with reported(self.redis_url):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hdel(self._key("q", queue, "workers"), worker_id)
                pipe.zrem(self._key("q", queue, "workers", "expiry"), worker_id)
                await pipe.execute()

    async def list_workers(self, queue: str) -> list[WorkerInfo]:
        entries, expiry = (
            self._key("q", queue, "workers"),
            self._key("q", queue, "workers", "expiry"),
        )
        now = time.time()
        client = self.client
        with reported(self.redis_url):
            expired = await client.zrangebyscore(expiry, "-inf", now)
            if expired:
                async with client.pipeline(transaction=True) as pipe:
                    pipe.hdel(entries, *expired)
                    pipe.zrem(expiry, *expired)
                    await pipe.execute()
            live: list[Any] = await client.zrangebyscore(expiry, f"({now}", "+inf")
            found = await client.hmget(entries, list(live)) if live else []
        return [WorkerInfo.from_dict(json.loads(raw)) for raw in found if raw is not None]


def _fields(job: Job, state: JobState) -> str:
    """A new record's fields, as the Lua scripts take them (a JSON object of strings)."""
    record = {
        "queue": job.queue,
        "task": job.task,
        "state": state.value,
        "args": json.dumps(job.args),
        "kwargs": json.dumps(job.kwargs),
        "attempt": str(job.attempt),
        "max_attempts": str(job.max_retries + 1),
        "priority": str(job.priority),
        "enqueued_at": repr(job.enqueued_at),
    }
    if job.run_at is not None:
        record["run_at"] = repr(job.run_at)
    if job.trace_id is not None:
        record["trace_id"] = job.trace_id
    return json.dumps(record)


def _info(job_id: str, raw: dict[Any, Any], now: float, *, attempts: bool = True) -> JobInfo:
    record = {_text(k): _text(v) for k, v in raw.items()}
    state = JobState(record["state"])
    run_at = _float(record.get("run_at"))
    if state is JobState.SCHEDULED and (run_at is None or run_at <= now):
        state = JobState.QUEUED
    lease_until = _float(record.get("lease_until"))
    if state is JobState.RUNNING and lease_until is not None and lease_until < now:
        state = JobState.QUEUED  # its worker died: the broker has put it back
    error = None
    if "error_type" in record:
        error = JobError(record["error_type"], record.get("error_message", ""))
    return JobInfo(
        id=job_id,
        queue=record["queue"],
        task=record["task"],
        state=state,
        args=json.loads(record.get("args", "[]")),
        kwargs=json.loads(record.get("kwargs", "{}")),
        attempt=int(record.get("attempt", 0)),
        max_attempts=int(record.get("max_attempts", 1)),
        priority=int(record.get("priority", 0)),
        enqueued_at=_float(record.get("enqueued_at")),
        run_at=run_at,
        started_at=_float(record.get("started_at")),
        finished_at=_float(record.get("finished_at")),
        error=error,
        progress=_float(record.get("progress")),
        progress_message=record.get("progress_message"),
        meta=json.loads(record.get("meta", "{}")),
        cancel_requested=record.get("cancel") == "1" and not state.finished,
        trace_id=record.get("trace_id"),
        worker_id=None if state is JobState.RUNNING else record.get("worker_id"),
        attempts=tuple(decode_attempts(record.get("attempts"))) if attempts else (),
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _float(value: str | None) -> float | None:
    return None if value is None or value == "" else float(value)
