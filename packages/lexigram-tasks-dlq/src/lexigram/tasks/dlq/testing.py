"""A contract suite for dead-letter storages (needs pytest and pytest-asyncio).

Every built-in storage runs it; a custom one proves itself the same way::

    class TestMyStorage(DeadLetterStorageContract):
        @pytest_asyncio.fixture
        async def storage(self) -> AsyncIterator[DeadLetterStorage]:
            s = MyStorage(...)
            await s.connect()
            yield s
            await s.purge(FailureFilter())
            await s.disconnect()
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from lexigram.tasks.dlq.filters import FailureFilter
from lexigram.tasks.dlq.record import FailureRecord
from lexigram.tasks.dlq.storage import DeadLetterStorage
from lexigram.tasks.job import Job

pytestmark = pytest.mark.asyncio

T0 = 1_700_000_000.0


def make_record(
    *,
    task: str | None = "app.charge",
    queue: str = "default",
    error_type: str = "ValueError",
    failed_at: float = T0,
    record_id: str | None = None,
    payload: bytes | None = None,
) -> FailureRecord:
    """A record for tests; ``task=None`` makes one of a message that was not a valid job."""
    job = None
    if task is not None:
        job = Job(
            task=task,
            args=[1, "two"],
            kwargs={"k": [3.5, None]},
            queue=queue,
            id=record_id or uuid.uuid4().hex,
            attempt=3,
            max_retries=2,
            headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
            extra={"tenant": "acme"},
        )
    return FailureRecord(
        id=job.id if job is not None else record_id or f"malformed-{uuid.uuid4().hex}",
        job=job,
        queue=queue,
        reason=f"{error_type}: boom",
        error_type=error_type,
        error_message="boom",
        traceback="Traceback (most recent call last):\n  ...\nValueError: boom\n",
        attempts=3 if job is not None else 0,
        worker_id="host:1:abc",
        failed_at=failed_at,
        trace_context={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"},
        payload=payload if job is None else None,
    )


class DeadLetterStorageContract:
    """Behaviour every :class:`DeadLetterStorage` shares. Override ``storage``."""

    @pytest_asyncio.fixture
    async def storage(self) -> AsyncIterator[DeadLetterStorage]:
        raise NotImplementedError("override `storage` in your Test... subclass")
        yield  # pragma: no cover

    async def test_get_of_an_unknown_id_is_none(self, storage: DeadLetterStorage) -> None:
        assert await storage.get("task-123") is None

    async def test_round_trip_keeps_every_field(self, storage: DeadLetterStorage) -> None:
        record = make_record()
        await storage.put(record)
        assert await storage.get(record.id) == record

    async def test_a_malformed_message_keeps_its_bytes(self, storage: DeadLetterStorage) -> None:
        raw = b"\xff\xfe not json \x00"
        record = make_record(task=None, payload=raw)
        await storage.put(record)
        got = await storage.get(record.id)
        assert got is not None
        assert got.payload == raw
        assert got.job is None
        assert got == record

    async def test_put_replaces_and_reindexes(self, storage: DeadLetterStorage) -> None:
        first = make_record(error_type="ValueError")
        await storage.put(first)
        assert first.job is not None
        second = _same_job(first, error_type="KeyError", failed_at=T0 + 5)
        await storage.put(second)
        assert await storage.get(first.id) == second
        assert await storage.count(FailureFilter(error_type="ValueError")) == 0
        assert await storage.count(FailureFilter(error_type="KeyError")) == 1
        assert await storage.count(FailureFilter()) == 1

    async def test_list_orders_by_failure_time_and_pages(self, storage: DeadLetterStorage) -> None:
        records = [make_record(failed_at=T0 + i) for i in (3, 1, 4, 0, 2)]
        for record in records:
            await storage.put(record)
        ordered = sorted(records, key=lambda r: r.failed_at)
        everything = FailureFilter()
        assert await storage.list(everything, limit=None) == ordered
        assert await storage.list(everything, limit=2, offset=2) == ordered[2:4]
        assert await storage.list(everything, limit=2, offset=4) == ordered[4:]
        assert await storage.list(everything, limit=10, offset=5) == []
        newest = await storage.list(everything, limit=3, newest_first=True)
        assert newest == ordered[::-1][:3]

    async def test_filters_alone_and_combined(self, storage: DeadLetterStorage) -> None:
        records = [
            make_record(task="a", queue="q1", error_type="ValueError", failed_at=T0),
            make_record(task="a", queue="q2", error_type="KeyError", failed_at=T0 + 10),
            make_record(task="b", queue="q1", error_type="ValueError", failed_at=T0 + 20),
            make_record(task="b", queue="q2", error_type="ValueError", failed_at=T0 + 30),
            make_record(task=None, queue="q1", error_type="MalformedJobError", failed_at=T0 + 40),
        ]
        for record in records:
            await storage.put(record)
        cases: list[dict[str, Any]] = [
            {"task": "a"},
            {"queue": "q1"},
            {"error_type": "ValueError"},
            {"since": T0 + 10},
            {"until": T0 + 20},
            {"since": T0 + 10, "until": T0 + 30},
            {"task": "b", "queue": "q2"},
            {"task": "a", "error_type": "ValueError", "queue": "q1"},
            {"error_type": "ValueError", "queue": "q2", "since": T0 + 25},
            {"queue": "q1", "until": T0 + 20},
            {"task": "nope"},
        ]
        for case in cases:
            where = FailureFilter(**case)
            expected = [r for r in records if where.matches(r)]
            assert await storage.list(where, limit=None) == expected, case
            assert await storage.count(where) == len(expected), case
            if len(expected) > 1:
                assert await storage.list(where, limit=1, offset=1) == expected[1:2], case

    async def test_delete_with_a_revision_spares_a_newer_failure(
        self, storage: DeadLetterStorage
    ) -> None:
        record = make_record()
        await storage.put(record)
        newer = record.renewed()
        await storage.put(newer)
        assert await storage.delete(record.id, record.revision) is False
        assert await storage.get(record.id) == newer
        assert await storage.delete(record.id, newer.revision) is True
        assert await storage.get(record.id) is None
        assert await storage.delete(record.id) is False
        assert await storage.count(FailureFilter()) == 0

    async def test_purge_removes_only_matching_records(self, storage: DeadLetterStorage) -> None:
        keep = make_record(task="keep", error_type="KeyError")
        doomed = [make_record(task="drop", failed_at=T0 + i) for i in range(3)]
        for record in [keep, *doomed]:
            await storage.put(record)
        assert await storage.purge(FailureFilter(task="drop", error_type="ValueError")) == 3
        assert await storage.list(FailureFilter(), limit=None) == [keep]
        assert await storage.purge(FailureFilter(until=T0)) == 0
        assert await storage.purge(FailureFilter()) == 1
        assert await storage.count(FailureFilter()) == 0


def _same_job(record: FailureRecord, *, error_type: str, failed_at: float) -> FailureRecord:
    fresh = make_record(
        task=record.task,
        queue=record.queue,
        error_type=error_type,
        failed_at=failed_at,
        record_id=record.id,
    )
    assert fresh.id == record.id
    return fresh
