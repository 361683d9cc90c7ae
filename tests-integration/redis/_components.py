"""One write and one read of each Redis component, shared by the Sentinel and cluster tests."""

from __future__ import annotations

from typing import Any

from lexigram.tasks import JobFailure
from lexigram.tasks.dlq import FailureFilter, FailureRecord
from lexigram.tasks.dlq.redis import RedisDeadLetterStorage
from lexigram.tasks.job import Job
from lexigram.tasks.ratelimit import Rate
from lexigram.tasks.redis import CacheBackendResultStore, RedisRateLimiter
from lexigram.tasks.redis.concurrency import RedisConcurrencyLimiter
from lexigram.tasks.redis.state_store import RedisJobStateStore
from lexigram.tasks.results import JobResult
from lexigram.tasks.scheduler.redis_store import RedisTemplateStore


async def round_trip(component: Any, ns: str) -> None:
    """One write and one read of ``component`` (connected), checked as a user would."""
    if isinstance(component, CacheBackendResultStore):
        await component.set(ns, JobResult(job_id=ns, status="succeeded", value=42))
        assert (await component.get(ns)) == JobResult(job_id=ns, status="succeeded", value=42)
    elif isinstance(component, RedisRateLimiter):
        assert await component.acquire("k", Rate(1, 60)) == 0
        assert await component.acquire("k", Rate(1, 60)) > 50  # the first one's slot is held
    elif isinstance(component, RedisConcurrencyLimiter):
        assert await component.acquire([("k", 1)], "first", 30)
        assert not await component.acquire([("k", 1)], "second", 30)
    elif isinstance(component, RedisJobStateStore):
        job = Job(task="sentinel.t", queue=ns)
        await component.record_enqueued([job])
        info = await component.get_job(job.id)
        assert info is not None and info.task == "sentinel.t"
    elif isinstance(component, RedisDeadLetterStorage):
        failure = JobFailure(
            job=Job(task="sentinel.t", queue=ns),
            queue=ns,
            reason="max_retries",
            error_type="ValueError",
            error_message="boom",
            traceback="",
            attempts=1,
            worker_id="w",
        )
        await component.put(FailureRecord.from_failure(failure))
        assert await component.count(FailureFilter()) == 1
        await component.purge(FailureFilter())
    elif isinstance(component, RedisTemplateStore):
        assert await component.init_cursor("tick", 100.0) == 100.0
        assert await component.claim("tick", 160.0) == 100.0
        assert await component.claim("tick", 160.0) is None  # claimed once
        await component.delete_all()


COMPONENTS = {
    "result store": lambda url, ns: CacheBackendResultStore(url, key_prefix=f"{ns}:"),
    "rate limiter": lambda url, ns: RedisRateLimiter(url, namespace=ns),
    "concurrency limiter": lambda url, ns: RedisConcurrencyLimiter(url, namespace=ns),
    "job state store": lambda url, ns: RedisJobStateStore(url, namespace=ns),
    "dead letter storage": lambda url, ns: RedisDeadLetterStorage(url, prefix=ns),
    "scheduler store": lambda url, ns: RedisTemplateStore(url, prefix=ns),
}
