"""Capability.CANCEL: a pending job never starts, a running one is signalled and not lost."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from lexigram.tasks.control import CancelOutcome, JobState
from lexigram.tasks.protocol import Capability, Delivery, TaskQueueProtocol
from lexigram.tasks.testing._base import ContractBase, requires
from lexigram.tasks.testing._control import control, job_info, settle_as, state_becomes
from lexigram.tasks.testing._helpers import collect, eventually, job_ids, make_job

#: How soon a listening worker must hear a cancellation (the issue's promise).
HEAR_WITHIN = 1.0


class Heard:
    """Ids a ``watch_cancellations`` callback was called with, and when."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def __call__(self, job_id: str) -> None:
        self.at.setdefault(job_id, time.monotonic())


class CancelContract(ContractBase):
    """``cancel``, ``watch_cancellations`` and ``cancel_requested`` (Capability.CANCEL)."""

    @asynccontextmanager
    async def listening(self, queue_name: str) -> AsyncIterator[Heard]:
        """A further instance of the queue watching cancellations, as a worker does."""
        heard = Heard()
        async with self.connected(queue_name) as worker:
            watch = asyncio.create_task(control(worker).watch_cancellations(heard))
            try:
                yield heard
            finally:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            assert watch.cancelled(), "watch_cancellations ended on its own"

    async def running_job(self, queue: TaskQueueProtocol, lease: float = 0.0) -> Delivery:
        await queue.enqueue(make_job(queue))
        [delivery] = await collect(queue, 1, lease_seconds=lease or self.lease_seconds * 10)
        return delivery

    @pytest.mark.asyncio
    @requires(Capability.CANCEL)
    async def test_cancel_of_an_unknown_id_is_not_found(self, queue: TaskQueueProtocol) -> None:
        assert await control(queue).cancel("job-never-enqueued-here") is CancelOutcome.NOT_FOUND

    @pytest.mark.asyncio
    @requires(Capability.CANCEL)
    async def test_a_cancelled_queued_job_is_never_delivered(
        self, queue: TaskQueueProtocol
    ) -> None:
        doomed, kept = make_job(queue), make_job(queue)
        await queue.enqueue_many([doomed, kept])
        assert await control(queue).cancel(doomed.id) is CancelOutcome.CANCELLED
        deliveries = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        assert job_ids(deliveries) == [kept.id]
        assert await queue.dequeue(max_jobs=5, lease_seconds=self.lease_seconds, wait=0.2) == []
        assert (await queue.counts()).pending == 1  # the kept job, running
        if Capability.INSPECT in queue.capabilities:
            info = await job_info(queue, doomed.id)
            assert info.state is JobState.CANCELLED
            assert info.finished_at is not None
        assert await control(queue).cancel(doomed.id) in (
            CancelOutcome.FINISHED,
            CancelOutcome.NOT_FOUND,
        )

    @pytest.mark.asyncio
    @requires(Capability.CANCEL, Capability.DELAY)
    async def test_a_cancelled_delayed_job_is_never_delivered(
        self, queue: TaskQueueProtocol
    ) -> None:
        due = time.time() + self.lease_seconds
        doomed = make_job(queue, run_at=due)
        marker = make_job(queue, run_at=due + self.clock_tolerance)
        await queue.enqueue_many([doomed, marker])
        assert await control(queue).cancel(doomed.id) is CancelOutcome.CANCELLED
        if Capability.INSPECT in queue.capabilities:
            assert (await job_info(queue, doomed.id)).state is JobState.CANCELLED
        delivered: list[Delivery] = []

        async def marker_arrived() -> bool:
            delivered.extend(await queue.dequeue(max_jobs=5, lease_seconds=10, wait=0.05))
            return marker.id in job_ids(delivered)

        await eventually(marker_arrived, self.lease_seconds + 10, message="marker never came")
        delivered += await queue.dequeue(max_jobs=5, lease_seconds=10, wait=0.2)
        assert job_ids(delivered) == [marker.id], "the cancelled delayed job was delivered"

    @pytest.mark.asyncio
    @requires(Capability.CANCEL, Capability.UNIQUE)
    async def test_cancel_releases_the_dedup_key(self, queue: TaskQueueProtocol) -> None:
        key = f"contract-{uuid.uuid4().hex}"
        first = make_job(queue, dedup_key=key)
        await queue.enqueue(first)
        assert await control(queue).cancel(first.id) is CancelOutcome.CANCELLED
        later = make_job(queue, dedup_key=key)
        assert await queue.enqueue(later) == later.id

    @pytest.mark.asyncio
    @requires(Capability.CANCEL)
    async def test_cancel_of_a_running_job_is_requested_and_recorded(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        delivery, other = await self.running_job(queue), await self.running_job(queue)
        assert delivery.job_id is not None
        assert await control(queue).cancel(delivery.job_id) is CancelOutcome.REQUESTED
        async with self.connected(queue_name) as worker:  # the fallback path: the heartbeat asks
            flagged = await control(worker).cancel_requested([delivery, other])
        assert flagged == {delivery.job_id}
        if Capability.INSPECT in queue.capabilities:
            info = await job_info(queue, delivery.job_id)
            assert (info.state, info.cancel_requested) == (JobState.RUNNING, True)
        settle_as(delivery, JobState.CANCELLED)
        await queue.ack(delivery)
        if Capability.INSPECT in queue.capabilities:
            await state_becomes(queue, delivery.job_id, JobState.CANCELLED)
        assert await queue.dequeue(max_jobs=5, lease_seconds=self.lease_seconds, wait=0.2) == []

    @pytest.mark.asyncio
    @requires(Capability.CANCEL)
    async def test_cancel_of_a_finished_job_changes_nothing(self, queue: TaskQueueProtocol) -> None:
        delivery = await self.running_job(queue)
        assert delivery.job_id is not None
        settle_as(delivery, JobState.SUCCEEDED)
        await queue.ack(delivery)
        keeps = self.keeps_finished_jobs
        expected = CancelOutcome.FINISHED if keeps else CancelOutcome.NOT_FOUND
        assert await control(queue).cancel(delivery.job_id) is expected
        if keeps and Capability.INSPECT in queue.capabilities:
            info = await job_info(queue, delivery.job_id)
            assert (info.state, info.cancel_requested) == (JobState.SUCCEEDED, False)

    @pytest.mark.asyncio
    @requires(Capability.CANCEL)
    async def test_a_listening_worker_hears_a_cancel_within_a_second(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        async with self.listening(queue_name) as heard:
            # A control channel may take a moment to subscribe: until a first cancel is
            # heard, a cancellation before that moment may be missed (the heartbeat's
            # cancel_requested covers it), so the timing starts once one is heard.
            probe = await self.running_job(queue)
            assert probe.job_id is not None

            async def probe_heard() -> bool:
                await control(queue).cancel(str(probe.job_id))
                return await _heard_within(heard, str(probe.job_id), 0.5)

            await eventually(probe_heard, 20, interval=0, message="no cancellation was heard")
            delivery = await self.running_job(queue)
            assert delivery.job_id is not None
            sent = time.monotonic()
            assert await control(queue).cancel(delivery.job_id) is CancelOutcome.REQUESTED
            assert await _heard_within(heard, delivery.job_id, 5.0), "never heard"
            took = heard.at[delivery.job_id] - sent
            assert took < HEAR_WITHIN, f"heard {took:.3f} s after the cancel"

    @pytest.mark.asyncio
    @requires(Capability.CANCEL)
    async def test_a_cancelled_job_whose_worker_died_is_not_run_again(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        """The worker leased the job and died before hearing the cancel: once its
        lease lapses the job ends cancelled instead of being delivered again."""
        lease = self.lease_seconds
        delivery = await self.running_job(queue, lease=lease)
        assert delivery.job_id is not None
        assert await control(queue).cancel(delivery.job_id) is CancelOutcome.REQUESTED
        lapsed_by = time.monotonic() + lease + self.clock_tolerance
        async with self.connected(queue_name) as other:

            async def settled() -> bool:
                got = await other.dequeue(max_jobs=5, lease_seconds=lease * 10, wait=0.05)
                assert delivery.job_id not in job_ids(got), "a cancelled job ran again"
                return time.monotonic() > lapsed_by and (await other.counts()).pending == 0

            await eventually(settled, lease + 15, message="the cancelled job did not settle")
        if Capability.INSPECT in queue.capabilities:
            await state_becomes(queue, delivery.job_id, JobState.CANCELLED)
        # The dead worker's late ack changes nothing.
        settle_as(delivery, JobState.SUCCEEDED)
        await queue.ack(delivery)
        assert await queue.dead_letters() == []


async def _heard_within(heard: Heard, job_id: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while job_id not in heard.at:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.005)
    return True
