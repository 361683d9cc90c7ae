"""Enqueue, dequeue and counts: the wire round trip and FIFO order."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from lexigram.tasks.errors import JobSerializationError, JobTooLargeError
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import BaseTaskQueue, Capability, QueueCounts, TaskQueueProtocol
from lexigram.tasks.testing._base import ContractBase
from lexigram.tasks.testing._helpers import collect, job_ids, make_job

#: Fields compared exactly after a round trip; times are compared to the millisecond.
_EXACT_FIELDS = (
    "id",
    "task",
    "args",
    "kwargs",
    "queue",
    "max_retries",
    "priority",
    "timeout",
    "dedup_key",
    "headers",
    "extra",
)
_TIME_FIELDS = ("enqueued_at", "run_at")


def assert_same_job(received: Job | None, sent: Job, *, attempt: int) -> None:
    """``received`` is ``sent`` after ``attempt`` deliveries, field for field."""
    assert received is not None, "a valid job came back as a malformed message"
    for name in _EXACT_FIELDS:
        assert getattr(received, name) == getattr(sent, name), f"field {name!r} changed"
    for name in _TIME_FIELDS:
        got, want = getattr(received, name), getattr(sent, name)
        assert (got is None) == (want is None), f"field {name!r} changed: {got!r} != {want!r}"
        if want is not None:
            assert got == pytest.approx(want, abs=1e-3), f"field {name!r} changed"
    assert received.attempt == attempt


def _nested_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def full_job(queue: TaskQueueProtocol) -> Job:
    """A job using every field the backend's capabilities allow, plus unknown fields."""
    caps = queue.capabilities
    return make_job(
        queue,
        task="contract.every_field",
        args=[1, -2.5, "zwölf", None, True, [1, [2]], {"k": "v"}],
        kwargs={"to": "a@b.c", "nested": {"list": [1, 2, 3], "null": None}, "emoji": "🚀"},
        attempt=2,
        max_retries=5,
        enqueued_at=1_700_000_000.125,
        run_at=time.time() - 60 if Capability.DELAY in caps else None,
        priority=4 if Capability.PRIORITY in caps else 0,
        timeout=12.5,
        dedup_key=f"every-field-{uuid.uuid4().hex}" if Capability.UNIQUE in caps else None,
        headers={
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
            "baggage": "user.id=42,tenant=acme",
            "x-note": "  spaces, ünïcødé & = ; signs  ",
        },
        extra={
            "x_future_field": {"nested": [1, "two", {"three": 3.0}]},
            "producer": "go-client/1.2",
            "flag": False,
        },
    )


class EnqueueContract(ContractBase):
    """Round trip of every job field, FIFO order, bulk enqueue and counts."""

    @pytest.mark.asyncio
    async def test_queue_describes_itself(self, queue: TaskQueueProtocol, queue_name: str) -> None:
        assert queue.queue_name == queue_name
        assert isinstance(queue.system, str)
        assert queue.system
        assert isinstance(queue.capabilities, frozenset)
        assert all(isinstance(c, Capability) for c in queue.capabilities)

    @pytest.mark.asyncio
    async def test_dequeue_from_empty_queue_returns_nothing(self, queue: TaskQueueProtocol) -> None:
        assert await queue.dequeue(max_jobs=5, lease_seconds=self.lease_seconds) == []
        assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=0)

    @pytest.mark.asyncio
    async def test_enqueue_returns_the_job_id(self, queue: TaskQueueProtocol) -> None:
        job = make_job(queue)
        assert await queue.enqueue(job) == job.id

    @pytest.mark.asyncio
    async def test_round_trip_preserves_every_field(self, queue: TaskQueueProtocol) -> None:
        sent = full_job(queue)
        await queue.enqueue(sent)
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        assert delivery.problem is None
        assert_same_job(delivery.job, sent, attempt=sent.attempt + 1)

    @pytest.mark.asyncio
    async def test_raw_message_is_the_json_document(self, queue: TaskQueueProtocol) -> None:
        sent = full_job(queue)
        await queue.enqueue(sent)
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        doc = json.loads(delivery.raw)
        assert doc["id"] == sent.id
        assert doc["task"] == sent.task
        assert doc["headers"] == sent.headers
        for key, value in sent.extra.items():
            assert doc[key] == value, f"unknown field {key!r} was not kept on the wire"

    @pytest.mark.asyncio
    async def test_headers_survive_unchanged(self, queue: TaskQueueProtocol) -> None:
        headers = {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "X-Mixed-Case": "Value",
            "empty": "",
            "json-ish": '{"a": [1, 2]}',
        }
        sent = make_job(queue, headers=dict(headers))
        await queue.enqueue(sent)
        [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
        assert delivery.job is not None
        assert delivery.job.headers == headers

    @pytest.mark.asyncio
    async def test_fifo_within_one_priority(self, queue: TaskQueueProtocol) -> None:
        jobs = [make_job(queue, args=[n]) for n in range(20)]
        for job in jobs:
            await queue.enqueue(job)
        deliveries = await collect(queue, 20, lease_seconds=self.lease_seconds * 10, batch=3)
        _assert_delivered(job_ids(deliveries), [job.id for job in jobs], self.keeps_order)

    @pytest.mark.asyncio
    async def test_enqueue_many_keeps_order_and_count(self, queue: TaskQueueProtocol) -> None:
        jobs = [make_job(queue, args=[n]) for n in range(50)]
        assert await queue.enqueue_many(jobs) == [job.id for job in jobs]
        assert (await queue.counts()).ready == 50
        deliveries = await collect(queue, 50, lease_seconds=self.lease_seconds * 10, batch=50)
        _assert_delivered(job_ids(deliveries), [job.id for job in jobs], self.keeps_order)
        assert sorted(d.job.args[0] for d in deliveries if d.job) == list(range(50))

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "bad_arg",
        [
            object(),
            float("nan"),
            "file-\udcff.txt",
            _nested_list(3000),
        ],
        ids=["object", "nan", "lone-surrogate", "nested-3000-deep"],
    )
    async def test_unwritable_job_is_refused_and_nothing_is_stored(
        self, queue: TaskQueueProtocol, bad_arg: object
    ) -> None:
        with pytest.raises(JobSerializationError, match="positional argument 0"):
            await queue.enqueue(make_job(queue, args=[bad_arg]))
        assert (await queue.counts()).ready == 0

    @pytest.mark.asyncio
    @pytest.mark.parametrize("bad_index", [3, 600], ids=["early", "past-a-chunk"])
    async def test_enqueue_many_is_all_or_nothing(
        self, queue: TaskQueueProtocol, bad_index: int
    ) -> None:
        jobs = [make_job(queue, args=[f"file-{n}.txt"]) for n in range(bad_index + 10)]
        jobs[bad_index].args = ["file-\udcff.txt"]  # as os.fsdecode gives for a bad file name
        with pytest.raises(JobSerializationError, match="lone surrogate"):
            await queue.enqueue_many(jobs)
        assert (await queue.counts()).ready == 0

    @pytest.mark.asyncio
    async def test_job_over_max_job_bytes_is_refused_naming_both_sizes(
        self, queue: TaskQueueProtocol
    ) -> None:
        if not isinstance(queue, BaseTaskQueue):
            pytest.skip("max_job_bytes is enforced by BaseTaskQueue.encode_job")
        queue.max_job_bytes = 4096
        small = make_job(queue, args=["x" * 1000])
        big = make_job(queue, args=["x" * 5000])
        with pytest.raises(JobTooLargeError, match=r"5,\d{3} bytes, over the limit of 4,096"):
            await queue.enqueue(big)
        with pytest.raises(JobTooLargeError):
            await queue.enqueue_many([small, big])
        assert (await queue.counts()).ready == 0
        assert await queue.enqueue(small) == small.id

    @pytest.mark.asyncio
    async def test_enqueue_many_of_nothing(self, queue: TaskQueueProtocol) -> None:
        assert await queue.enqueue_many([]) == []
        assert (await queue.counts()).ready == 0

    @pytest.mark.asyncio
    async def test_counts_follow_the_job_states(self, queue: TaskQueueProtocol) -> None:
        await queue.enqueue_many([make_job(queue) for _ in range(3)])
        assert await queue.counts() == QueueCounts(ready=3, delayed=0, running=0, failed=0)

        first, second = await collect(queue, 2, lease_seconds=self.lease_seconds * 10)
        assert await queue.counts() == QueueCounts(ready=1, delayed=0, running=2, failed=0)

        await queue.nack(first, requeue=False, reason="contract: counts")
        assert await queue.counts() == QueueCounts(ready=1, delayed=0, running=1, failed=1)

        await queue.ack(second)
        counts = await queue.counts()
        assert counts == QueueCounts(ready=1, delayed=0, running=0, failed=1)
        assert counts.pending == 1


def _assert_delivered(ids: list[str | None], expected: list[str], keeps_order: bool) -> None:
    """The ids delivered are ``expected``: in that order, or (for a backend that
    does not keep a queue-wide order) each exactly once."""
    if keeps_order:
        assert ids == expected
    else:
        assert sorted(ids, key=str) == sorted(expected)
