"""The result-store contract: what every :class:`~lexigram.tasks.results.ResultStore` keeps."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import ClassVar

import pytest
import pytest_asyncio

from lexigram.tasks.errors import JobCancelledError, ResultTimeoutError, TaskFailedError
from lexigram.tasks.results import JobResult, ResultStore
from lexigram.tasks.testing._helpers import eventually

#: How long a test waits for a waiter that must wake (generous: a loaded machine).
WAKE_TIMEOUT = 10.0


def new_job_id() -> str:
    return f"contract-result-{uuid.uuid4().hex}"


class ResultStoreContract:
    """The result-store contract suite. Subclass it as ``Test...`` in a test module.

    Override :meth:`create_store` (a new, not connected store; instances
    made by it share their results, as clients of one server do). Set
    ``short_ttl`` to the shortest TTL the store honours for the expiry test.
    """

    #: The TTL (seconds) of the expiry test; the test waits up to this plus 15 s.
    short_ttl: ClassVar[float] = 1.0

    async def create_store(self) -> ResultStore:
        """Return a new, NOT connected store; every instance sees the same results."""
        raise NotImplementedError(f"{type(self).__name__} must override create_store()")

    @asynccontextmanager
    async def connected_store(self) -> AsyncIterator[ResultStore]:
        """A further connected store (another process's client, say)."""
        store = await self.create_store()
        await store.connect()
        try:
            yield store
        finally:
            await store.disconnect()

    @pytest_asyncio.fixture
    async def store(self) -> AsyncIterator[ResultStore]:
        """A connected store; disconnected after the test."""
        async with self.connected_store() as opened:
            yield opened

    @pytest.mark.asyncio
    async def test_a_missing_result_is_none(self, store: ResultStore) -> None:
        assert await store.get(new_job_id()) is None

    @pytest.mark.asyncio
    async def test_a_result_round_trips(self, store: ResultStore) -> None:
        job_id = new_job_id()
        value = {"rows": [1, 2.5, "three", None, True], "nested": {"ok": False}}
        stored = JobResult.success(job_id, value)
        await store.set(job_id, stored)
        async with self.connected_store() as other:
            got = await other.get(job_id)
        assert got is not None
        assert (got.job_id, got.status, got.value) == (job_id, "succeeded", value)
        assert got.finished_at == pytest.approx(stored.finished_at, abs=1e-3)
        assert got.unwrap() == value

    @pytest.mark.asyncio
    async def test_a_failed_result_round_trips(self, store: ResultStore) -> None:
        job_id = new_job_id()
        await store.set(job_id, JobResult.failure(job_id, "ValueError", "bad input"))
        got = await store.get(job_id)
        assert got is not None
        assert (got.status, got.error_type, got.error_message) == (
            "failed",
            "ValueError",
            "bad input",
        )
        with pytest.raises(TaskFailedError) as raised:
            got.unwrap()
        assert "bad input" in str(raised.value)

    @pytest.mark.asyncio
    async def test_a_cancelled_result_round_trips(self, store: ResultStore) -> None:
        job_id = new_job_id()
        await store.set(job_id, JobResult.cancelled(job_id))
        got = await store.wait(job_id, timeout=WAKE_TIMEOUT)
        assert got.status == "cancelled"
        with pytest.raises(JobCancelledError):
            got.unwrap()

    @pytest.mark.asyncio
    async def test_a_later_set_replaces_the_result(self, store: ResultStore) -> None:
        job_id = new_job_id()
        await store.set(job_id, JobResult.failure(job_id, "ConnectionError", "try later"))
        await store.set(job_id, JobResult.success(job_id, 42))
        got = await store.get(job_id)
        assert got is not None
        assert (got.status, got.value) == ("succeeded", 42)

    @pytest.mark.asyncio
    async def test_wait_returns_a_result_already_there(self, store: ResultStore) -> None:
        job_id = new_job_id()
        await store.set(job_id, JobResult.success(job_id, "done"))
        got = await store.wait(job_id, timeout=WAKE_TIMEOUT)
        assert got.value == "done"

    @pytest.mark.asyncio
    async def test_waiters_are_woken_by_a_set_made_later(self, store: ResultStore) -> None:
        """Two waiters on this client, one on another; the result is set on a third."""
        job_id = new_job_id()
        async with self.connected_store() as other, self.connected_store() as producer:
            waiters = [
                asyncio.create_task(client.wait(job_id, timeout=WAKE_TIMEOUT * 3))
                for client in (store, store, other)
            ]
            try:
                await asyncio.sleep(0.2)  # let the waiters start waiting
                assert not any(w.done() for w in waiters), "wait() returned before the result"
                await producer.set(job_id, JobResult.success(job_id, {"n": 7}))
                done, _ = await asyncio.wait(waiters, timeout=WAKE_TIMEOUT)
                assert len(done) == 3, "a waiter was not woken by the result"
                assert [w.result().value for w in waiters] == [{"n": 7}] * 3
            finally:
                for waiter in waiters:
                    waiter.cancel()

    @pytest.mark.asyncio
    async def test_wait_times_out_with_result_timeout_error(self, store: ResultStore) -> None:
        with pytest.raises(ResultTimeoutError):
            await asyncio.wait_for(store.wait(new_job_id(), timeout=0.3), WAKE_TIMEOUT)

    @pytest.mark.asyncio
    async def test_a_result_expires_after_its_ttl(self, store: ResultStore) -> None:
        job_id, kept_id = new_job_id(), new_job_id()
        await store.set(job_id, JobResult.success(job_id, 1), ttl=self.short_ttl)
        await store.set(kept_id, JobResult.success(kept_id, 2), ttl=3600)
        assert await store.get(job_id) is not None

        async def expired() -> bool:
            return await store.get(job_id) is None

        await eventually(expired, self.short_ttl + 15, message="the result never expired")
        kept = await store.get(kept_id)
        assert kept is not None
        assert kept.value == 2
