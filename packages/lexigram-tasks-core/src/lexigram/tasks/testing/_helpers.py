"""Polling and job-building helpers shared by the contract tests."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Delivery, TaskQueueProtocol

T = TypeVar("T")


@overload
async def eventually(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,
    *,
    interval: float = ...,
    message: str = ...,
) -> T: ...


@overload
async def eventually(
    predicate: Callable[[], T],
    timeout: float = ...,
    *,
    interval: float = ...,
    message: str = ...,
) -> T: ...


async def eventually(
    predicate: Callable[[], Any],
    timeout: float = 5.0,
    *,
    interval: float = 0.02,
    message: str = "",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that.

    Raises ``AssertionError`` when ``timeout`` seconds pass first. Use it
    instead of ``sleep()`` followed by an assertion: the test is as fast as
    the backend allows and fails with a clear message when it is not.
    """
    deadline = time.monotonic() + timeout
    while True:
        result: Any = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f": {message}" if message else ""
            raise AssertionError(f"condition not met within {timeout:g} s{detail}")
        await asyncio.sleep(interval)


async def collect(
    queue: TaskQueueProtocol,
    count: int,
    *,
    lease_seconds: float,
    timeout: float = 10.0,
    batch: int = 100,
) -> list[Delivery]:
    """Dequeue until exactly ``count`` deliveries arrived, or fail after ``timeout`` seconds.

    A backend may hand out fewer jobs per call than asked for, so this loops.
    """
    deliveries: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(deliveries) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(
                f"expected {count} deliveries within {timeout:g} s, got {len(deliveries)}"
            )
        deliveries += await queue.dequeue(
            max_jobs=min(count - len(deliveries), batch),
            lease_seconds=lease_seconds,
            wait=min(remaining, 0.5),
        )
    return deliveries


def make_job(queue: TaskQueueProtocol, task: str = "contract.noop", **fields: Any) -> Job:
    """A job addressed to ``queue`` with a unique id; ``fields`` override the defaults."""
    fields.setdefault("id", f"job-{uuid.uuid4().hex}")
    return Job(task=task, queue=queue.queue_name, **fields)


def job_ids(deliveries: list[Delivery]) -> list[str | None]:
    """The job ids of ``deliveries``, in order (``None`` for a malformed message)."""
    return [delivery.job_id for delivery in deliveries]
