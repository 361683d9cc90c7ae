"""Job visibility and control on Redis: states, listing, progress, cancellation, workers.

A base of :class:`~lexigram.tasks.redis.RedisTaskQueue` (as its primitives
of :class:`~lexigram.tasks.control.JobControlProtocol`). States live in the
job's hash and rq's registries, written by the scripts a job's life already
runs; see ``docs/backends/redis.md``, "Inspecting and controlling jobs".
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from lexigram.tasks.control import (
    CancelCallback,
    CancelOutcome,
    JobInfo,
    JobPage,
    JobState,
    Progress,
    WorkerInfo,
    decode_cursor,
    encode_cursor,
    listening,
)
from lexigram.tasks.errors import JobSerializationError
from lexigram.tasks.protocol import Delivery
from lexigram.tasks.redis._connection import reported
from lexigram.tasks.redis._jobinfo import decode_hash, job_info, text
from lexigram.tasks.redis._sentinel import tidy
from lexigram.tasks.redis.keys import QueueKeys, cancel_channel
from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger("lexigram.tasks.redis")

#: Entries one ``list_jobs`` call examines at most (beyond the page size):
#: a filter that rejects most jobs returns a short page and a cursor, not a long scan.
SCAN_BUDGET = 2000
#: Largest page ``list_jobs`` returns.
MAX_PAGE = 1000

_ALL_SOURCES = ("ready", "scheduled", "running", "finished", "failed", "canceled")
_SOURCES: dict[JobState, tuple[str, ...]] = {
    JobState.QUEUED: ("ready",),
    JobState.SCHEDULED: ("scheduled",),
    JobState.RETRYING: ("scheduled", "ready"),
    JobState.RUNNING: ("running",),
    JobState.SUCCEEDED: ("finished",),
    # A job a dead letter queue took is in the finished registry (see ack.lua).
    JobState.FAILED: ("failed", "finished"),
    JobState.DEAD: ("failed", "finished"),
    JobState.CANCELLED: ("canceled",),
}
# Seconds between reconnection attempts of the cancellation subscription.
_RECONNECT = (0.1, 0.5, 1.0, 2.0)
# An idle subscription pings this often, so a dead connection is noticed.
_PING_EVERY = 15.0


class JobControl:
    """``get_job``, ``list_jobs``, ``record_progress``, cancellation and the worker registry."""

    queue_name: str
    redis_url: str
    finished_ttl: float
    keys: QueueKeys

    @property
    def client(self) -> Redis:
        raise NotImplementedError

    async def _run(self, name: str, args: list[Any]) -> Any:
        raise NotImplementedError

    # -- inspecting ------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobInfo | None:
        """The job's state and details (one HGETALL); None when its hash is gone.

        A finished job is kept ``finished_ttl`` seconds; after that the
        provider falls back to the result store.
        """
        with reported(self.redis_url):
            raw = await self.client.hgetall(self.keys.job(job_id))
        return self._info(job_id, decode_hash(raw))

    def _info(self, job_id: str, fields: dict[str, str]) -> JobInfo | None:
        origin = fields.get("origin")
        if origin is not None and origin != self.queue_name:
            return None  # another queue's job on the same server
        return job_info(job_id, self.queue_name, fields)

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        task: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobPage:
        """A page of jobs from the structure holding that state, in one script call.

        Queued jobs come from the ready list (the cursor is an index into it),
        the others from rq's sorted sets (the cursor is the last entry's score
        and id), so a deep page costs what the first does. A call examines at
        most ``limit + SCAN_BUDGET`` entries: with a task filter that matches
        few jobs, a page may be short, or empty, and still carry a cursor.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        limit = min(limit, MAX_PAGE)
        sources = _ALL_SOURCES if state is None else _SOURCES[JobState(state)]
        source, position = _decode_cursor(cursor, len(sources))
        args: list[Any] = [
            limit,
            limit + SCAN_BUDGET,
            task or "",
            "" if state is None else JobState(state).value,
            position,
            *sources[source - 1 :],
        ]
        reply = await self._run("list", args)
        next_source, next_position = int(reply[0]), reply[1].decode()
        jobs: list[JobInfo] = []
        i = 2
        while i < len(reply):
            job_id, count = reply[i].decode(), int(reply[i + 1])
            flat = reply[i + 2 : i + 2 + count]
            i += 2 + count
            info = self._info(job_id, decode_hash(dict(zip(flat[::2], flat[1::2], strict=True))))
            if info is not None:
                jobs.append(info)
        more = None
        if next_source:
            more = _encode_cursor(source + next_source - 1, next_position)
        return JobPage(jobs, more)

    async def record_progress(self, delivery: Delivery, progress: Progress) -> None:
        """Store progress and metadata on the job's hash while the delivery holds its lease."""
        meta: list[str] = []
        for key, value in progress.meta.items():
            try:
                meta += [str(key), json.dumps(value)]
            except (TypeError, ValueError) as exc:
                raise JobSerializationError(
                    f"metadata {key!r} of job {delivery.job_id} is not JSON: {exc}"
                ) from exc
        fraction = "" if progress.fraction is None else repr(float(progress.fraction))
        given = progress.message is not None
        await self._run(
            "progress",
            [delivery.token, fraction, "1" if given else "0", progress.message or "", *meta],
        )

    # -- cancelling ------------------------------------------------------------

    async def cancel(self, job_id: str) -> CancelOutcome:
        """Take a queued or delayed job out of line, or signal a running one (one script)."""
        outcome = await self._run(
            "cancel",
            [job_id, repr(float(self.finished_ttl)), cancel_channel(self.queue_name)],
        )
        return CancelOutcome(outcome.decode())

    async def cancel_requested(self, deliveries: Sequence[Delivery]) -> set[str]:
        """Ids of these running jobs marked for cancellation (one pipelined round trip)."""
        ids = [d.job_id for d in deliveries if d.job_id is not None]
        if not ids:
            return set()
        with reported(self.redis_url):
            async with self.client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(self.keys.job(job_id), "lx_cancel")
                flags = await pipe.execute()
        return {job_id for job_id, flag in zip(ids, flags, strict=True) if flag == b"1"}

    async def watch_cancellations(self, on_cancel: CancelCallback) -> None:
        """Call ``on_cancel(job_id)`` for each cancellation published, until cancelled.

        One pub/sub connection on the queue's control channel; a broken one
        is replaced (a cancellation published meanwhile is found by the
        heartbeat's :meth:`cancel_requested`).
        """
        channel = cancel_channel(self.queue_name)
        failures = 0
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                listening(on_cancel)
                failures = 0
                idle_since = time.monotonic()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        if time.monotonic() - idle_since > _PING_EVERY:
                            await pubsub.ping()
                            idle_since = time.monotonic()
                        continue
                    idle_since = time.monotonic()
                    if message.get("type") == "message":
                        self._heard(on_cancel, message["data"])
            except (RedisError, OSError) as exc:
                pause = _RECONNECT[min(failures, len(_RECONNECT) - 1)]
                failures += 1
                logger.warning(
                    "cancellation channel of queue %r interrupted (%s); reconnecting in %.1fs",
                    self.queue_name,
                    tidy(str(exc)),
                    pause,
                )
                await asyncio.sleep(pause)
            finally:
                await pubsub.aclose()

    def _heard(self, on_cancel: CancelCallback, data: Any) -> None:
        try:
            on_cancel(text(data))
        except Exception:  # the callback's bug must not end the subscription
            logger.exception("cancellation callback failed for job %r", data)

    # -- workers ---------------------------------------------------------------

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        """Write the worker's entry (a key expiring after ``ttl``) and index it by expiry."""
        index = self.keys.workers
        with reported(self.redis_url):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(
                    self.keys.worker(info.id),
                    json.dumps(info.to_dict()),
                    px=max(1, int(ttl * 1000)),
                )
                pipe.zadd(index, {info.id: time.time() + ttl})
                await pipe.execute()

    async def deregister_worker(self, worker_id: str) -> None:
        with reported(self.redis_url):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(self.keys.worker(worker_id))
                pipe.zrem(self.keys.workers, worker_id)
                await pipe.execute()

    async def list_workers(self) -> list[WorkerInfo]:
        """The workers whose entries have not expired (expired ones are pruned here)."""
        index = self.keys.workers
        with reported(self.redis_url):
            members: list[Any] = await self.client.zrange(index, 0, -1)
            ids = [text(raw) for raw in members]
            if not ids:
                return []
            entries = await self.client.mget([self.keys.worker(i) for i in ids])
            gone = [i for i, entry in zip(ids, entries, strict=True) if entry is None]
            if gone:
                await self.client.zrem(index, *gone)
        workers = []
        for entry in entries:
            if entry is not None:
                try:
                    workers.append(WorkerInfo.from_dict(json.loads(entry)))
                except (ValueError, KeyError, TypeError):
                    continue  # an entry another version wrote: not ours to show
        return workers


def _encode_cursor(source: int, position: str) -> str:
    return encode_cursor([source, position])


def _decode_cursor(cursor: str | None, sources: int) -> tuple[int, str]:
    """The source (1-based) and position a cursor points at; the start without one."""
    if not cursor:
        return 1, ""
    decoded = decode_cursor(cursor)
    if len(decoded) == 2:
        source, position = decoded
        if isinstance(source, int) and isinstance(position, str) and 1 <= source <= sources:
            return source, position
    raise ValueError(f"not a cursor of this listing: {cursor!r}")
