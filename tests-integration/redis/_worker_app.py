"""A worker process for the multi-process Redis tests (not a test module).

    python _worker_app.py REDIS_URL QUEUE NAMESPACE LEASE_SECONDS

Runs ``provider.run()`` until SIGTERM. Its connections carry the client name
``NAMESPACE`` (so a test can CLIENT KILL exactly them); tasks record what
they do under keys starting with ``NAMESPACE:`` so the test can check every
job ran, and how often. Spans are exported as JSON to the list
``NAMESPACE:spans`` for the cross-process trace test.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence

import redis
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from lexigram.tasks import TaskProvider
from lexigram.tasks.redis import CacheBackendResultStore, RedisRateLimiter, RedisTaskQueue

URL, QUEUE, NS, LEASE = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
NAMED_URL = f"{URL}{'&' if '?' in URL else '?'}client_name={NS}"


class RedisSpanExporter(SpanExporter):
    """Ships finished spans to the test process through a Redis list."""

    def __init__(self) -> None:
        self.client = redis.Redis.from_url(URL)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            parent = span.parent
            self.client.rpush(
                f"{NS}:spans",
                json.dumps(
                    {
                        "name": span.name,
                        "kind": span.kind.name,
                        "trace_id": span.context.trace_id,
                        "span_id": span.context.span_id,
                        "parent_span_id": parent.span_id if parent is not None else None,
                        "links": [link.context.span_id for link in span.links],
                    }
                ),
            )
        return SpanExportResult.SUCCESS


tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(RedisSpanExporter()))

provider = TaskProvider(
    queue=RedisTaskQueue(redis_url=NAMED_URL, queue_name=QUEUE),
    worker_count=20,
    lease_seconds=LEASE,
    poll_interval=0.5,
    result_store=CacheBackendResultStore(redis_url=NAMED_URL, ttl=60),
    rate_limiter=RedisRateLimiter(redis_url=NAMED_URL, namespace=NS),
    tracer_provider=tracer_provider,
)
store = redis.asyncio.Redis.from_url(URL)


async def _done(key: str) -> None:
    async with store.pipeline(transaction=False) as pipe:
        pipe.hincrby(f"{NS}:done", key, 1)
        pipe.sadd(f"{NS}:pids", os.getpid())
        await pipe.execute()


@provider.task(name="record")
async def record(key: str) -> None:
    await _done(key)


@provider.task(name="slow_record")
async def slow_record(key: str) -> None:
    await asyncio.sleep(0.01)
    await _done(key)


@provider.task(name="hang_once")
async def hang_once(key: str) -> None:
    """Hangs on its first run (the test SIGKILLs that process); completes on the next."""
    if await store.incr(f"{NS}:started:{key}") == 1:
        await store.set(f"{NS}:hanging", os.getpid())
        await asyncio.sleep(3600)
    await _done(key)


@provider.task(name="limited", rate_limit="20/s")
async def limited(key: str) -> None:
    await store.rpush(f"{NS}:starts", repr(time.time()))
    await _done(key)


@provider.task(name="square")
def square(x: int) -> int:
    return x * x


if __name__ == "__main__":
    provider.run()
