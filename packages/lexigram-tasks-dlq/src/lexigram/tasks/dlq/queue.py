"""DeadLetterQueue: where jobs that failed for good are kept, inspected and replayed."""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, Self

from opentelemetry import trace
from opentelemetry.trace import SpanContext

from lexigram.tasks.dlq import _tracing
from lexigram.tasks.dlq.errors import (
    NotReplayableError,
    RecordNotRemovedError,
    ReplayTargetError,
)
from lexigram.tasks.dlq.filters import FailureFilter, Moment
from lexigram.tasks.dlq.record import FailureRecord
from lexigram.tasks.dlq.replay import ReplayReport, ReplayTarget, Targets, replay_job
from lexigram.tasks.dlq.storage import (
    AtomicReplayStorage,
    DeadLetterStorage,
    MemoryDeadLetterStorage,
)
from lexigram.tasks.handle import JobHandle
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import TaskQueueProtocol
from lexigram.tasks.worker import JobFailure

logger = logging.getLogger("lexigram.tasks.dlq")

#: Records of one replayed batch removed at once (each removal is a round trip).
_REMOVE_CONCURRENCY = 16


class Feeder(Protocol):
    """Something that moves failures into the queue from elsewhere while it runs."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class DeadLetterQueue:
    """Keeps :class:`FailureRecord` s of jobs that failed for good; inspect, replay, purge.

    ``DeadLetterQueue()`` keeps records in memory; pass a storage for records
    that outlive the process (``RedisDeadLetterStorage``,
    ``PostgresDeadLetterStorage``). It is a dead-letter sink: give it to
    ``TaskProvider(..., dead_letter=dlq)`` and the workers send it every job
    that exhausted its retries and every message that is not a valid job.

    ``replay`` sends jobs back to their original queue through ``target`` (a
    :class:`~lexigram.tasks.TaskProvider`, a queue, or queues by name; by
    default the ``target`` given here). A record is removed only after its
    job is safely enqueued, so a crash in between loses nothing.
    Connections open on first use; ``async with dlq`` or ``await dlq.disconnect()``
    closes them.
    """

    def __init__(
        self,
        storage: DeadLetterStorage | None = None,
        *,
        target: ReplayTarget | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        feeders: Sequence[Feeder] = (),
    ) -> None:
        self.storage: DeadLetterStorage = storage or MemoryDeadLetterStorage()
        self.target = target
        #: Started and stopped with the queue (e.g. ``RabbitMQDeadLetterFeeder``).
        self.feeders: builtins.list[Feeder] = builtins.list(feeders)
        self.tracer = _tracing.dlq_tracer(tracer_provider)
        self._connected = False
        self._connect_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"DeadLetterQueue(storage={self.storage!r})"

    @classmethod
    def from_config(cls, options: Mapping[str, Any], **kwargs: Any) -> DeadLetterQueue:
        """Build one from the ``tasks.dead_letter`` config mapping (``storage: redis``, ...,
        and optionally ``rabbitmq: {amqp_url: ..., queue_names: [...]}`` for a feeder)."""
        from lexigram.tasks.dlq.config import dead_letter_queue_from_config

        return dead_letter_queue_from_config(cls, options, **kwargs)

    # -- lifecycle -------------------------------------------------------------

    async def connect(self) -> None:
        """Connect the storage (done on first use anyway); idempotent."""
        if self._connected:
            return
        async with self._connect_lock:
            if not self._connected:
                await self.storage.connect()
                self._connected = True

    async def disconnect(self) -> None:
        """Close the storage's connections; idempotent."""
        if self._connected:
            self._connected = False
            await self.storage.disconnect()

    async def start(self) -> None:
        """Connect and start the feeders: ``provider.add_service(dlq)`` runs them with
        the workers."""
        await self.connect()
        for feeder in self.feeders:
            await feeder.start()

    async def stop(self) -> None:
        """Stop the feeders and disconnect."""
        for feeder in reversed(self.feeders):
            await feeder.stop()
        await self.disconnect()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    # -- receiving failures ----------------------------------------------------

    async def add(self, failure: JobFailure) -> None:
        """Record a worker's failure (the :class:`~lexigram.tasks.worker.DeadLetterSink` method).

        Called by the worker inside the failed run's span, whose context the
        record keeps. If the job id is already held, the record is replaced.
        """
        context = _tracing.failed_run_context(failure.trace_context)
        await self.add_record(FailureRecord.from_failure(failure, trace_context=context))

    async def add_record(self, record: FailureRecord) -> None:
        """Store a record built elsewhere (e.g. by the RabbitMQ feeder)."""
        await self.connect()
        await self.storage.put(record)
        logger.info(
            "dead-lettered %s (%s) from queue %r: %s",
            record.id,
            record.task or "not a valid job",
            record.queue,
            record.reason,
        )

    # -- inspecting --------------------------------------------------------------

    async def get(self, record_id: str) -> FailureRecord | None:
        """The record of this job id, or None if the queue holds none."""
        await self.connect()
        return await self.storage.get(record_id)

    async def list(
        self,
        *,
        where: FailureFilter | None = None,
        limit: int | None = 50,
        offset: int = 0,
        newest_first: bool = False,
        **criteria: str | Moment | None,
    ) -> list[FailureRecord]:
        """Records matching the filter, oldest first (or newest), a page at a time.

        The filter is ``where=FailureFilter(...)`` and/or its fields as
        keywords (``task=``, ``queue=``, ``error_type=``, ``since=``,
        ``until=``; the times as epoch seconds or datetimes,
        ``since <= failed_at < until``), as for :meth:`count`,
        :meth:`replay_many` and :meth:`purge`.
        """
        if offset < 0 or (limit is not None and limit < 0):
            raise ValueError("limit and offset must be >= 0")
        where = FailureFilter.merged(where, criteria, "list")
        await self.connect()
        return await self.storage.list(where, limit=limit, offset=offset, newest_first=newest_first)

    async def count(
        self, *, where: FailureFilter | None = None, **criteria: str | Moment | None
    ) -> int:
        """How many records match the filter (all of them without one); see :meth:`list`."""
        where = FailureFilter.merged(where, criteria, "count")
        await self.connect()
        return await self.storage.count(where)

    # -- replaying ---------------------------------------------------------------

    async def replay(
        self, record_id: str, target: ReplayTarget | None = None
    ) -> JobHandle[Any] | None:
        """Send one record's job back to its queue; None if there is no such record.

        The job runs again with attempts reset, under a new id (the handle's),
        in a new trace linked to the failed run. The record is removed once
        the job is enqueued; if removing it fails, :class:`RecordNotRemovedError`
        is raised and the record stays. A record that is not a valid job
        raises :class:`NotReplayableError`.
        """
        await self.connect()
        record = await self.storage.get(record_id)
        if record is None:
            return None
        targets = self._targets(target)
        queue = targets.queue_for(record)
        job = replay_job(record, unique=targets.unique(queue))
        await targets.connect()
        replayed, not_removed = await self._replay_group(queue, [(record, job)], targets)
        if record.id in not_removed:
            raise not_removed[record.id]
        job_id = replayed.get(record.id)
        if job_id is None:
            return None  # replayed or replaced by someone else meanwhile
        logger.info("replayed %s as job %s onto queue %r", record.id, job_id, job.queue)
        return JobHandle(job_id, job.task, job.queue, targets.result_store)

    async def replay_many(
        self,
        target: ReplayTarget | None = None,
        *,
        where: FailureFilter | None = None,
        limit: int | None = None,
        batch_size: int = 100,
        **criteria: str | Moment | None,
    ) -> ReplayReport:
        """Replay every record the filter matches (see :meth:`list`), at most ``limit``,
        in batches, oldest first.

        Records that fail again while this runs are not picked up a second
        time. Records that cannot be replayed (not a valid job, no queue for
        them) stay, and the report says why.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        where = FailureFilter.merged(where, criteria, "replay_many").bounded(time.time())
        await self.connect()
        targets = self._targets(target)
        await targets.connect()
        report = ReplayReport()
        kept = 0  # matching records left in place: the next page starts after them
        while limit is None or report.total < limit:
            size = batch_size if limit is None else min(batch_size, limit - report.total)
            page = await self.storage.list(where, limit=size, offset=kept)
            if not page:
                break
            kept += await self._replay_page(page, targets, report)
        if report.total:
            logger.info("replay of %s: %s", where.describe(), report)
        return report

    async def replay_all(self, target: ReplayTarget | None = None) -> ReplayReport:
        """Replay every record."""
        return await self.replay_many(target)

    async def _replay_page(
        self, page: builtins.list[FailureRecord], targets: Targets, report: ReplayReport
    ) -> int:
        """Replay one page; return how many of its records stay in the storage."""
        kept = 0
        groups: dict[str, builtins.list[tuple[FailureRecord, Job]]] = {}
        for record in page:
            try:
                queue = targets.queue_for(record)
                job = replay_job(record, unique=targets.unique(queue))
            except (NotReplayableError, ReplayTargetError) as exc:
                report.skipped[record.id] = str(exc)
                kept += 1
                continue
            groups.setdefault(record.queue, []).append((record, job))
        for queue_name, group in groups.items():
            try:
                replayed, not_removed = await self._replay_group(
                    targets.queues[queue_name], group, targets
                )
            except Exception as exc:
                for record, _ in group:
                    report.failed[record.id] = f"enqueue failed: {type(exc).__name__}: {exc}"
                kept += len(group)
                continue
            report.replayed.update(replayed)
            for record_id, error in not_removed.items():
                report.failed[record_id] = str(error)
            for record, _ in group:
                if record.id not in replayed and record.id not in not_removed:
                    report.skipped[record.id] = "changed by another process during the replay"
            kept += len(group) - len(replayed)
        return kept

    async def _replay_group(
        self,
        queue: TaskQueueProtocol,
        group: builtins.list[tuple[FailureRecord, Job]],
        targets: Targets,
    ) -> tuple[dict[str, str], dict[str, RecordNotRemovedError]]:
        """Enqueue the jobs of records bound for one queue, then remove the records.

        Returns (record id -> job id for those replayed and removed, record id
        -> error for those enqueued but not removed). Enqueue errors propagate,
        and then no record has been removed.
        """
        storage = self.storage
        if isinstance(storage, AtomicReplayStorage) and storage.can_replay_atomically(queue):
            jobs = {record.id: job for record, job in group}

            async def send(live: builtins.list[FailureRecord]) -> builtins.list[str]:
                return await self._send(queue, [(r, jobs[r.id]) for r in live], targets)

            done = await storage.replay_atomically(queue, [r for r, _ in group], send)
            return done, {}
        job_ids = await self._send(queue, group, targets)
        replayed: dict[str, str] = {}
        not_removed: dict[str, RecordNotRemovedError] = {}
        slots = asyncio.Semaphore(_REMOVE_CONCURRENCY)

        async def remove(record: FailureRecord, job_id: str) -> None:
            async with slots:
                try:
                    await self._remove_replayed(record, job_id)
                except RecordNotRemovedError as exc:
                    not_removed[record.id] = exc
                else:
                    replayed[record.id] = job_id

        await asyncio.gather(
            *(remove(record, job_id) for (record, _), job_id in zip(group, job_ids, strict=True))
        )
        return replayed, not_removed

    async def _send(
        self,
        queue: TaskQueueProtocol,
        group: builtins.list[tuple[FailureRecord, Job]],
        targets: Targets,
    ) -> builtins.list[str]:
        """Enqueue replayed jobs inside their PRODUCER spans."""
        if len(group) == 1:
            [(record, job)] = group
            links = _tracing.links_for(record.trace_context, _headers(record))
            with _tracing.job_span(targets.tracer, job, queue.system, record.id, links, bulk=False):
                return [await queue.enqueue(job)]
        creates: builtins.list[SpanContext] = []
        for record, job in group:
            links = _tracing.links_for(record.trace_context, _headers(record))
            with _tracing.job_span(
                targets.tracer, job, queue.system, record.id, links, bulk=True
            ) as span:
                creates.append(span.get_span_context())
        with _tracing.batch_span(targets.tracer, queue.queue_name, queue.system, creates):
            return await queue.enqueue_many([job for _, job in group])

    async def _remove_replayed(self, record: FailureRecord, job_id: str) -> None:
        try:
            removed = await self.storage.delete(record.id, record.revision)
        except Exception as exc:
            raise RecordNotRemovedError(
                f"record {record.id} was replayed as job {job_id} but could not be removed "
                f"({type(exc).__name__}: {exc}); it is kept, and replaying it again "
                "finds the same pending job on backends with unique keys",
                job_id,
            ) from exc
        if not removed:
            # Replaced by a newer failure of the same id, or removed by another
            # replayer meanwhile: leave whatever is there now.
            logger.debug("record %s changed during its replay; keeping the newer one", record.id)

    def _targets(self, target: ReplayTarget | None) -> Targets:
        chosen = target if target is not None else self.target
        if chosen is None:
            raise ReplayTargetError(
                "nowhere to replay to: pass a TaskProvider or a queue "
                "(dlq.replay(id, provider)) or DeadLetterQueue(target=...)"
            )
        return Targets.resolve(chosen, self.tracer)

    # -- removing ----------------------------------------------------------------

    async def delete(self, record_id: str) -> bool:
        """Remove one record without replaying it; True if it was there."""
        await self.connect()
        return await self.storage.delete(record_id)

    async def purge(
        self, *, where: FailureFilter | None = None, **criteria: str | Moment | None
    ) -> int:
        """Remove every record the filter matches (every record without one; see
        :meth:`list`); return how many."""
        where = FailureFilter.merged(where, criteria, "purge")
        await self.connect()
        removed = await self.storage.purge(where)
        if removed:
            logger.info("purged %d record(s): %s", removed, where.describe())
        return removed


def _headers(record: FailureRecord) -> dict[str, str]:
    return record.job.headers if record.job is not None else {}
