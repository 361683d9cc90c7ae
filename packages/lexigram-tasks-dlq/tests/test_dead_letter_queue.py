"""DeadLetterQueue with the worker, on the memory backend and storage."""

from __future__ import annotations

import time
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from lexigram.tasks import (
    DeadLetterQueue,
    FailureRecord,
    MemoryTaskQueue,
    TaskDeadLetteredEvent,
    TaskFailedError,
    TaskProvider,
)
from lexigram.tasks.dlq import (
    REPLAY_OF_HEADER,
    MemoryDeadLetterStorage,
    NotReplayableError,
    RecordNotRemovedError,
    ReplayTargetError,
)
from lexigram.tasks.dlq.replay import replay_job
from lexigram.tasks.dlq.testing import make_record
from lexigram.tasks.testing import eventually
from lexigram.tasks.worker import UNKNOWN_SINCE_FIELD


async def test_the_seed_example_returns_none_for_an_unknown_job() -> None:
    dlq = DeadLetterQueue()
    record = await dlq.get("task-123")
    assert record is None


def failing_provider(
    dlq: DeadLetterQueue, *, queue: MemoryTaskQueue | None = None, **kwargs: Any
) -> tuple[TaskProvider, dict[str, bool]]:
    kwargs.setdefault("poll_interval", 0.05)
    provider = TaskProvider(queue=queue or MemoryTaskQueue(), dead_letter=dlq, **kwargs)
    state = {"fixed": False}

    @provider.task(name="billing.charge", max_retries=2, retry_backoff=0.01)
    async def charge(customer: str, cents: int) -> str:
        if not state["fixed"]:
            raise ValueError(f"card of {customer} declined")
        return f"charged {customer} {cents}"

    return provider, state


async def test_a_job_that_always_fails_lands_with_its_traceback_after_its_retries() -> None:
    dlq = DeadLetterQueue()
    provider, _ = failing_provider(dlq)
    dead: list[TaskDeadLetteredEvent] = []
    provider.events.subscribe(TaskDeadLetteredEvent, dead.append)
    before = time.time()
    async with provider:
        handle = await provider.enqueue("billing.charge", "ada", cents=500)
        with pytest.raises(TaskFailedError):
            await handle.result(timeout=10)
        record = await eventually(lambda: dlq.get(handle.id), message="no DLQ record")
    assert isinstance(record, FailureRecord)
    assert record.id == handle.id
    assert record.task == "billing.charge"
    assert record.queue == "default"
    assert record.error_type == "ValueError"
    assert record.error_message == "card of ada declined"
    assert "Traceback (most recent call last)" in record.traceback
    assert 'raise ValueError(f"card of {customer} declined")' in record.traceback
    assert record.attempts == 3  # the first run and two retries
    assert record.worker_id == provider_worker_id(dead)
    assert before <= record.failed_at <= time.time()
    assert record.job is not None
    assert (record.job.args, record.job.kwargs) == (["ada"], {"cents": 500})
    assert [e.job.id for e in dead if e.job is not None] == [handle.id]
    # The job left the queue: it is in the DLQ, not also dead-lettered by the backend.
    assert (await provider.queue.counts()).pending == 0
    assert await provider.queue.dead_letters() == []


def provider_worker_id(events: list[TaskDeadLetteredEvent]) -> str:
    assert events, "no TaskDeadLetteredEvent"
    return events[0].worker_id


async def test_a_message_that_is_not_a_job_is_kept_with_its_bytes() -> None:
    dlq = DeadLetterQueue()
    queue = MemoryTaskQueue()
    provider, _ = failing_provider(dlq, queue=queue)
    raw = b'{"task": 42, "broken": true'
    async with provider:
        queue.push_raw(raw)
        [record] = await eventually(lambda: dlq.list(), message="malformed message not recorded")
    assert record.job is None
    assert record.task is None
    assert record.payload == raw
    assert record.id.startswith("malformed-")
    assert record.error_type == "MalformedJobError"
    assert "not valid JSON" in record.error_message
    assert not record.replayable
    with pytest.raises(NotReplayableError):
        await dlq.replay(record.id, provider)
    assert await dlq.get(record.id) == record


async def test_replay_runs_the_job_again_and_it_succeeds_once_fixed() -> None:
    dlq = DeadLetterQueue()
    provider, state = failing_provider(dlq)
    async with provider:
        handle = await provider.enqueue("billing.charge", "ada", cents=500)
        record = await eventually(lambda: dlq.get(handle.id))
        state["fixed"] = True
        replayed = await dlq.replay(record.id, provider)
        assert replayed is not None
        assert await replayed.result(timeout=10) == "charged ada 500"
    assert replayed.id != handle.id  # a new id: the old one holds the failed result
    assert await dlq.get(handle.id) is None
    assert await dlq.count() == 0
    assert await dlq.replay(handle.id, provider) is None


async def test_a_replayed_job_that_fails_again_comes_back_with_fresh_attempts() -> None:
    dlq = DeadLetterQueue()
    provider, _ = failing_provider(dlq)
    async with provider:
        handle = await provider.enqueue("billing.charge", "bob", cents=1)
        first = await eventually(lambda: dlq.get(handle.id))
        replayed = await dlq.replay(first.id, provider)
        assert replayed is not None
        again = await eventually(lambda: dlq.get(replayed.id))
    assert again.attempts == 3  # attempts were reset, so it had all its retries again
    assert again.job is not None
    assert again.job.headers[REPLAY_OF_HEADER] == handle.id
    assert again.job.headers["lexigram-replay-count"] == "1"
    assert await dlq.count() == 1


async def test_list_filters_page_and_count() -> None:
    dlq = DeadLetterQueue()
    provider = TaskProvider(queue=MemoryTaskQueue("mail"), dead_letter=dlq)

    @provider.task(name="mail.send")
    async def send(n: int) -> None:
        raise KeyError(n) if n % 2 else TimeoutError(n)

    async with provider:
        for n in range(6):
            await send.enqueue(n)
        await eventually(lambda: _count_is(dlq, 6))
    assert await dlq.count(error_type="KeyError") == 3
    assert await dlq.count(task="mail.send", queue="mail") == 6
    assert await dlq.count(queue="other") == 0
    everything = await dlq.list(limit=None)
    assert [r.failed_at for r in everything] == sorted(r.failed_at for r in everything)
    middle = everything[2].failed_at
    assert await dlq.list(since=middle, limit=None) == everything[2:]
    assert await dlq.list(until=middle, limit=None) == everything[:2]
    assert await dlq.list(limit=2, offset=4) == everything[4:]
    assert await dlq.list(limit=2, newest_first=True) == everything[::-1][:2]


async def _count_is(dlq: DeadLetterQueue, n: int) -> bool:
    return await dlq.count() == n


async def test_replay_many_by_filter_and_purge_by_filter() -> None:
    dlq = DeadLetterQueue()
    queue = MemoryTaskQueue()
    provider = TaskProvider(queue=queue, dead_letter=dlq)
    runs: list[int] = []
    healed = {"KeyError": False}

    @provider.task(name="jobs.work")
    async def work(n: int) -> None:
        if n % 2 and not healed["KeyError"]:
            raise KeyError(n)
        if not n % 2:
            raise LookupError(n)
        runs.append(n)

    async with provider:
        for n in range(6):
            await work.enqueue(n)
        queue.push_raw(b"garbage")
        await eventually(lambda: _count_is(dlq, 7))
        key_errors = {r.id for r in await dlq.list(error_type="KeyError", limit=None)}
        assert len(key_errors) == 3
        healed["KeyError"] = True
        report = await dlq.replay_many(provider, error_type="KeyError")
        assert set(report.replayed) == key_errors
        assert not report.skipped and not report.failed
        await eventually(lambda: sorted(runs) == [1, 3, 5], message=f"runs: {runs}")
        assert await dlq.count(error_type="KeyError") == 0
        all_report = await dlq.replay_all(provider)
        # The malformed message cannot be replayed and stays; the rest ran again (and failed).
        assert len(all_report.skipped) == 1
        assert len(all_report.replayed) == 3
        await eventually(lambda: _count_is(dlq, 4))
    assert await dlq.purge(error_type="LookupError") == 3
    assert await dlq.count() == 1
    assert await dlq.purge() == 1
    assert await dlq.count() == 0


async def test_replay_needs_a_queue_of_the_records_name() -> None:
    dlq = DeadLetterQueue()
    provider, _ = failing_provider(dlq)
    async with provider:
        handle = await provider.enqueue("billing.charge", "ada", cents=1)
        await eventually(lambda: dlq.get(handle.id))
    with pytest.raises(ReplayTargetError, match="nowhere to replay"):
        await dlq.replay(handle.id)
    with pytest.raises(ReplayTargetError, match="queue 'default'"):
        await dlq.replay(handle.id, MemoryTaskQueue("elsewhere"))
    report = await dlq.replay_many(MemoryTaskQueue("elsewhere"))
    assert list(report.skipped) == [handle.id]
    assert await dlq.get(handle.id) is not None


class FailingDelete(MemoryDeadLetterStorage):
    """A storage whose delete fails, as if the process died right after the enqueue."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = True

    async def delete(self, record_id: str, revision: str | None = None) -> bool:
        if self.broken:
            raise ConnectionError("storage went away")
        return await super().delete(record_id, revision)


async def test_a_failure_between_enqueue_and_delete_loses_nothing_and_replays_once() -> None:
    storage = FailingDelete()
    dlq = DeadLetterQueue(storage)
    queue = MemoryTaskQueue()
    provider, _ = failing_provider(dlq, queue=queue)
    async with provider:
        handle = await provider.enqueue("billing.charge", "ada", cents=1)
        await eventually(lambda: dlq.get(handle.id))
    # Workers stopped: replayed jobs wait in the queue, where we can count them.
    with pytest.raises(RecordNotRemovedError) as caught:
        await dlq.replay(handle.id, queue)
    assert await dlq.get(handle.id) is not None, "the record was lost"
    assert (await queue.counts()).ready == 1
    report = await dlq.replay_all(queue)
    assert list(report.failed) == [handle.id]
    storage.broken = False
    again = await dlq.replay(handle.id, queue)
    assert again is not None
    assert again.id == caught.value.job_id
    assert (await queue.counts()).ready == 1, "a repeated replay added a second job"
    assert await dlq.get(handle.id) is None


async def test_a_newer_failure_of_the_same_id_survives_an_older_replay() -> None:
    dlq = DeadLetterQueue()
    provider, _ = failing_provider(dlq)
    async with provider:
        handle = await provider.enqueue("billing.charge", "ada", cents=1)
        old = await eventually(lambda: dlq.get(handle.id))
    newer = old.renewed()
    await dlq.storage.put(newer)
    assert await dlq.storage.delete(old.id, old.revision) is False
    assert await dlq.get(handle.id) == newer


async def test_replay_is_a_producer_span_linked_to_the_failed_run() -> None:
    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    dlq = DeadLetterQueue()
    provider, state = failing_provider(dlq, tracer_provider=tracing)
    async with provider:
        handle = await provider.enqueue("billing.charge", "ada", cents=1)
        record = await eventually(lambda: dlq.get(handle.id))
        failed_runs = [
            s
            for s in exporter.get_finished_spans()
            if s.name == "process default" and s.attributes["messaging.message.id"] == handle.id
        ]
        last_run = max(failed_runs, key=lambda s: s.attributes["lexigram.task.attempt"])
        assert any(e.name == "dead_letter" for e in last_run.events)
        assert last_run.context is not None
        trace_id = f"{last_run.context.trace_id:032x}"
        span_id = f"{last_run.context.span_id:016x}"
        assert record.trace_context["traceparent"].startswith(f"00-{trace_id}-{span_id}-")
        state["fixed"] = True
        replayed = await dlq.replay(record.id, provider)
        assert replayed is not None
        await replayed.result(timeout=10)
    spans = exporter.get_finished_spans()
    [send] = [
        s
        for s in spans
        if s.kind == SpanKind.PRODUCER and s.attributes.get("messaging.message.id") == replayed.id
    ]
    assert send.name == "send default"
    assert send.attributes["messaging.operation.name"] == "replay"
    assert send.attributes["lexigram.dlq.replay_of"] == handle.id
    assert any(link.context.span_id == last_run.context.span_id for link in send.links)
    [rerun] = [
        s
        for s in spans
        if s.name == "process default" and s.attributes["messaging.message.id"] == replayed.id
    ]
    assert rerun.parent is not None and send.context is not None
    assert rerun.parent.span_id == send.context.span_id


async def test_dead_letter_queue_works_as_a_provider_service() -> None:
    dlq = DeadLetterQueue()
    provider, _ = failing_provider(dlq)
    provider.add_service(dlq)
    async with provider:
        handle = await provider.enqueue("billing.charge", "ada", cents=1)
        assert await eventually(lambda: dlq.get(handle.id)) is not None


def test_a_replayed_job_starts_afresh_on_every_counter() -> None:
    record = make_record()
    assert record.job is not None
    record.job.failures = 2
    record.job.extra[UNKNOWN_SINCE_FIELD] = 1.0  # from an earlier unknown-task grace
    job = replay_job(record, unique=False)
    assert (job.attempt, job.failures) == (0, 0)
    assert job.extra == {"tenant": "acme"}  # other unknown fields are kept
