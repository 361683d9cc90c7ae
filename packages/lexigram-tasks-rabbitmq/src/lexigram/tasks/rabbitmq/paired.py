"""Job control on RabbitMQ through a paired :class:`~lexigram.tasks.state_store.JobStateStore`.

RabbitMQ cannot look inside a queue, so a queue created with ``state_store``
records each job's life in the store, one batched call per step: enqueued
(before the publish, so a job is never invisible while it can run), leased
(per fetched batch: the store answers with the jobs cancelled meanwhile,
which are acked as cancelled and never run), settled (per ack batch, with
``delivery.outcome``). Status, listing, progress, cancellation and the
worker list are read from the store. A running job's cancellation is flagged
in the store and published on a fanout exchange, ``lexigram.control.<queue>``,
to which each watching worker binds an exclusive, auto-deleted queue.
Without a store none of this runs, and the job-control calls raise
:class:`~lexigram.tasks.errors.CapabilityNotSupportedError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import NoReturn

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from lexigram.tasks.control import (
    CancelCallback,
    CancelOutcome,
    JobInfo,
    JobPage,
    JobState,
    Progress,
    WorkerInfo,
    listening,
)
from lexigram.tasks.errors import CapabilityNotSupportedError
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Delivery
from lexigram.tasks.rabbitmq.errors import CONNECTION_ERRORS
from lexigram.tasks.rabbitmq.leases import LeaseBook
from lexigram.tasks.state_store import JobStateStore, Leased, Settled

logger = logging.getLogger("lexigram.tasks.rabbitmq")

CONTROL_EXCHANGE_PREFIX = "lexigram.control."


def control_exchange(queue: str) -> str:
    """The fanout exchange carrying the cancellations of ``queue``'s running jobs."""
    return f"{CONTROL_EXCHANGE_PREFIX}{queue}"


def settled_as(delivery: Delivery, *, ack: bool, requeue: bool, delay: float) -> Settled | None:
    """What the store records for a settled delivery (None for a message that is no job)."""
    job = delivery.job
    if job is None:
        return None
    outcome, error = delivery.outcome, delivery.error

    def settled(state: JobState, run_at: float | None = None) -> Settled:
        return Settled(
            job.id, state, error, run_at, job.attempt, delivery.worker_id, delivery.attempt_record
        )

    if ack:
        return settled(outcome or JobState.SUCCEEDED)
    if requeue:
        if outcome is JobState.RETRYING:
            return settled(JobState.RETRYING, time.time() + delay if delay > 0 else None)
        return settled(JobState.QUEUED)
    if outcome not in (JobState.FAILED, JobState.DEAD):
        outcome = JobState.FAILED if error is not None else JobState.DEAD
    return settled(outcome)


class Paired:
    """The job-control half of :class:`RabbitMQTaskQueue` (a base class)."""

    queue_name: str
    _state: JobStateStore | None
    _leases: LeaseBook
    _connection: AbstractRobustConnection | None

    def _store(self, method: str) -> JobStateStore:
        if self._state is None:
            raise CapabilityNotSupportedError(
                f"{type(self).__name__} (queue {self.queue_name!r}) has no job state store, so "
                f"{method}() is not available: RabbitMQ cannot look inside a queue. Pair it with "
                "one: state_store={'type': 'redis', 'redis_url': ...} (YAML: state_store: "
                "{type: redis, redis_url: ...}), or type postgres with a dsn"
            )
        return self._state

    # -- recording a job's life (called by the delivery path) ------------------------

    async def _record_enqueued(self, jobs: Sequence[Job]) -> None:
        assert self._state is not None
        await self._state.record_enqueued(jobs)

    async def _forget_unpublished(self, jobs: Sequence[Job], cause: BaseException) -> None:
        """The publish failed: remove the records made for it (best effort, logged)."""
        assert self._state is not None
        try:
            await self._state.forget([job.id for job in jobs])
        except Exception as exc:
            logger.warning(
                "publishing %d job(s) failed (%s) and removing their records from the state "
                "store failed too (%s): they show queued until purged by hand",
                len(jobs),
                type(cause).__name__,
                exc,
            )

    async def _record_settled(self, settled: Sequence[Settled | None]) -> None:
        """Record how deliveries ended; the broker has settled them already, so a store
        failure is logged (their records stay ``running`` until the lease time passes)."""
        assert self._state is not None
        items = [item for item in settled if item is not None]
        if not items:
            return
        try:
            await self._state.record_settled(items)
        except Exception as exc:
            logger.warning(
                "recording %d settled job(s) in the state store failed: %s", len(items), exc
            )

    async def _record_leased(self, out: list[Delivery], lease_seconds: float) -> set[str]:
        """Record the batch as running; the ids of jobs that must not run."""
        assert self._state is not None
        until = time.time() + lease_seconds
        leased = [Leased(d.job, d.job.attempt, until) for d in out if d.job is not None]
        return await self._state.record_leased(leased) if leased else set()

    # -- Capability.INSPECT --------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobInfo | None:
        """The job's record in the state store; None for an unknown id."""
        return await self._store("get_job").get_job(job_id)

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        task: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobPage:
        """This queue's jobs from the state store, in enqueue order, with a cursor."""
        store = self._store("list_jobs")
        return await store.list_jobs(
            self.queue_name, state=state, task=task, limit=limit, cursor=cursor
        )

    async def record_progress(self, delivery: Delivery, progress: Progress) -> None:
        store = self._store("record_progress")
        if delivery.job is not None and self._leases.owned(delivery.token) is not None:
            await store.record_progress(delivery.job.id, progress)

    # -- Capability.CANCEL ----------------------------------------------------------------

    async def cancel(self, job_id: str) -> CancelOutcome:
        """Tombstone a pending job; flag a running one and tell the workers (fanout)."""
        outcome = await self._store("cancel").cancel(job_id)
        if outcome is CancelOutcome.REQUESTED:
            await self._announce_cancel(job_id)
        return outcome

    async def _announce_cancel(self, job_id: str) -> None:
        connection = self._require_control_connection()
        channel = await connection.channel(publisher_confirms=False)
        try:
            exchange = await channel.get_exchange(control_exchange(self.queue_name), ensure=False)
            message = aio_pika.Message(job_id.encode())
            # Not mandatory: with no worker watching, nobody needs to hear it.
            await exchange.publish(message, routing_key="", mandatory=False)
        except CONNECTION_ERRORS as exc:
            # Flagged in the store already: the workers' heartbeat finds it.
            logger.warning("announcing the cancellation of job %s failed: %s", job_id, exc)
        finally:
            if not channel.is_closed:
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await channel.close()

    async def watch_cancellations(self, on_cancel: CancelCallback) -> None:
        """Call ``on_cancel(job_id)`` for each running job cancelled, until cancelled.

        An exclusive, auto-deleted queue bound to the control exchange, on a
        robust channel: after a reconnect aio-pika declares, binds and consumes
        it again by itself (cancellations sent meanwhile are found by the
        heartbeat's :meth:`cancel_requested`).
        """
        self._store("watch_cancellations")
        connection = self._require_control_connection()
        channel = await connection.channel(publisher_confirms=False)
        try:
            exchange = await channel.declare_exchange(
                control_exchange(self.queue_name), aio_pika.ExchangeType.FANOUT, durable=True
            )
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange)

            async def heard(message: AbstractIncomingMessage) -> None:
                try:
                    on_cancel(message.body.decode())
                except Exception:
                    logger.exception("a cancellation callback failed")

            await queue.consume(heard, no_ack=True)
            listening(on_cancel)
            await _forever()
        finally:
            if not channel.is_closed:
                await asyncio.shield(channel.close())

    async def cancel_requested(self, deliveries: Sequence[Delivery]) -> set[str]:
        ids = [d.job.id for d in deliveries if d.job is not None]
        store = self._store("cancel_requested")
        return await store.cancel_requested(ids) if ids else set()

    # -- Capability.WORKERS ----------------------------------------------------------------

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        await self._store("register_worker").register_worker(self.queue_name, info, ttl)

    async def deregister_worker(self, worker_id: str) -> None:
        await self._store("deregister_worker").deregister_worker(self.queue_name, worker_id)

    async def list_workers(self) -> list[WorkerInfo]:
        return await self._store("list_workers").list_workers(self.queue_name)

    def _require_control_connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")
        return self._connection


async def _forever() -> NoReturn:
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")
