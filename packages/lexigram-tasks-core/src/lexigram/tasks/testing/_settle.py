"""Settling a delivery: ack removes it, nack requeues it or dead-letters it."""

from __future__ import annotations

import json

import pytest

from lexigram.tasks.protocol import QueueCounts, TaskQueueProtocol
from lexigram.tasks.testing._base import ContractBase
from lexigram.tasks.testing._helpers import collect, make_job

_EMPTY = QueueCounts(ready=0, delayed=0, running=0, failed=0)


class SettleContract(ContractBase):
    """ack, ack_many, nack with requeue, nack to the dead letters."""

    @pytest.mark.asyncio
    async def test_ack_removes_the_job(self, queue: TaskQueueProtocol) -> None:
        await queue.enqueue(make_job(queue))
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds)
        await queue.ack(delivery)
        assert await queue.counts() == _EMPTY
        assert await queue.dequeue(max_jobs=5, lease_seconds=self.lease_seconds) == []
        assert await queue.dead_letters() == []

    @pytest.mark.asyncio
    async def test_ack_many_removes_every_job(self, queue: TaskQueueProtocol) -> None:
        await queue.enqueue_many([make_job(queue) for _ in range(10)])
        deliveries = await collect(queue, 10, lease_seconds=self.lease_seconds * 10, batch=10)
        await queue.ack_many(deliveries[:7])
        assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=3, failed=0)
        await queue.ack_many(deliveries[7:])
        assert await queue.counts() == _EMPTY

    @pytest.mark.asyncio
    async def test_ack_leaves_other_jobs_alone(self, queue: TaskQueueProtocol) -> None:
        first, second = make_job(queue), make_job(queue)
        await queue.enqueue_many([first, second])
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        await queue.ack(delivery)
        [rest] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        if self.keeps_order:
            assert (delivery.job_id, rest.job_id) == (first.id, second.id)
        else:
            assert {delivery.job_id, rest.job_id} == {first.id, second.id}

    @pytest.mark.asyncio
    async def test_nack_requeue_redelivers_and_counts_attempts(
        self, queue: TaskQueueProtocol
    ) -> None:
        job = make_job(queue, max_retries=3)
        await queue.enqueue(job)
        for attempt in (1, 2, 3):
            [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
            assert delivery.job_id == job.id
            assert delivery.job is not None
            assert delivery.job.attempt == attempt
            await queue.nack(delivery, requeue=True, reason="contract: retry")
        [last] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        assert last.job is not None
        assert last.job.attempt == 4
        await queue.ack(last)
        assert await queue.counts() == _EMPTY

    @pytest.mark.asyncio
    async def test_nack_requeue_stores_the_job_as_modified(self, queue: TaskQueueProtocol) -> None:
        job = make_job(
            queue,
            kwargs={"step": 1},
            headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
            extra={"x_unknown": [1, 2]},
        )
        await queue.enqueue(job)
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        assert delivery.job is not None
        delivery.job.kwargs["step"] = 2
        delivery.job.headers["x-last-error"] = "ValueError: boom"
        delivery.job.max_retries = 7
        await queue.nack(delivery, requeue=True)

        [again] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        assert again.job is not None
        assert again.job.id == job.id
        assert again.job.kwargs == {"step": 2}
        assert again.job.headers == {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "x-last-error": "ValueError: boom",
        }
        assert again.job.max_retries == 7
        assert again.job.extra == {"x_unknown": [1, 2]}
        assert again.job.attempt == 2

    @pytest.mark.asyncio
    async def test_requeue_takes_the_attempt_from_the_job(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        """The attempt rule: a requeued job's next attempt is ``delivery.job.attempt + 1``.

        The worker hands a job back without using up an attempt (at shutdown,
        under a rate limit, for a task it does not have) by lowering
        ``job.attempt`` before ``nack(requeue=True)``, and derives lost runs
        from ``attempt - 1 - failures``. A backend that keeps its own count
        instead makes every hand-back look like a run lost with its worker: the
        job is run alone, then dead-lettered as ``LeaseExpired`` although it
        never failed. So store the attempt the job carries; count a delivery
        only at ``dequeue``.
        """
        job = make_job(queue, max_retries=0)
        await queue.enqueue(job)
        for _ in range(3):  # handed back by three workers that stop, each on its connection
            async with self.connected(queue_name) as worker:
                [delivery] = await collect(worker, 1, lease_seconds=self.lease_seconds * 10)
                assert delivery.job is not None
                assert delivery.job.attempt == 1, "a handed-back job came back with a used attempt"
                delivery.job.attempt -= 1
                await worker.nack(delivery, requeue=True, reason="contract: handed back")
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        assert delivery.job is not None
        delivery.job.attempt, delivery.job.failures = 6, 5  # what the worker wrote back wins
        await queue.nack(delivery, requeue=True, reason="contract: retry")
        [last] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        assert last.job is not None
        assert (last.job.attempt, last.job.failures) == (7, 5)
        await queue.ack(last)
        assert await queue.counts() == _EMPTY

    @pytest.mark.asyncio
    async def test_nack_without_requeue_dead_letters_with_reason(
        self, queue: TaskQueueProtocol
    ) -> None:
        job = make_job(queue, args=["payload"], extra={"x_unknown": "kept"})
        await queue.enqueue(job)
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        await queue.nack(delivery, requeue=False, reason="ValueError: gave up after 3 attempts")

        assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=1)
        assert await queue.dequeue(max_jobs=5, lease_seconds=self.lease_seconds) == []
        [dead] = await queue.dead_letters()
        assert dead.reason == "ValueError: gave up after 3 attempts"
        assert dead.job_id == job.id
        assert dead.failed_at > 0
        doc = json.loads(dead.payload)
        assert doc["id"] == job.id
        assert doc["task"] == job.task
        assert doc["args"] == ["payload"]
        assert doc["x_unknown"] == "kept"

    @pytest.mark.asyncio
    async def test_dead_letters_are_oldest_first_and_limited(
        self, queue: TaskQueueProtocol
    ) -> None:
        jobs = [make_job(queue, args=[n]) for n in range(3)]
        await queue.enqueue_many(jobs)
        failed = []
        for n in range(3):
            [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
            await queue.nack(delivery, requeue=False, reason=f"reason {n}")
            failed.append(delivery.job_id)
        if self.keeps_order:
            assert failed == [job.id for job in jobs]
        dead = await queue.dead_letters()
        assert [d.job_id for d in dead] == failed
        assert [d.reason for d in dead] == ["reason 0", "reason 1", "reason 2"]
        assert [d.job_id for d in await queue.dead_letters(limit=2)] == failed[:2]
        assert (await queue.counts()).failed == 3
