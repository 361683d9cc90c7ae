"""A worker process for the multi-process RabbitMQ tests (not a test module).

    python _worker_app.py AMQP_URL REDIS_URL QUEUE NAMESPACE LEASE WORKERS CONNECTION_NAME [TYPE]

Runs ``provider.run()`` until SIGTERM. Its AMQP connection is named
``CONNECTION_NAME`` (so a test can close exactly it with ``rabbitmqctl``).
Tasks record what they do in Redis under ``NAMESPACE:`` keys: that is only
the tests' bookkeeping, the jobs travel through RabbitMQ. ``TYPE`` is the
queue type, ``classic`` (default) or ``quorum``. Spans are exported
as JSON to the Redis list ``NAMESPACE:spans`` for the cross-process trace test.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence

import redis
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from lexigram.tasks import TaskProvider
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue

AMQP_URL, REDIS_URL, QUEUE, NS = sys.argv[1:5]
LEASE, WORKERS, CONNECTION_NAME = float(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
QUEUE_TYPE = sys.argv[8] if len(sys.argv) > 8 else "classic"


class RedisSpanExporter(SpanExporter):
    """Ships finished spans to the test process through a Redis list."""

    def __init__(self) -> None:
        self.client = redis.Redis.from_url(REDIS_URL)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            parent = span.parent
            record = {
                "name": span.name,
                "kind": span.kind.name,
                "trace_id": span.context.trace_id,
                "span_id": span.context.span_id,
                "parent_span_id": parent.span_id if parent is not None else None,
                "attributes": {k: str(v) for k, v in (span.attributes or {}).items()},
            }
            self.client.rpush(f"{NS}:spans", json.dumps(record))
        return SpanExportResult.SUCCESS


tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(RedisSpanExporter()))

provider = TaskProvider(
    queue=RabbitMQTaskQueue(
        amqp_url=AMQP_URL,
        queue_name=QUEUE,
        connection_name=CONNECTION_NAME,
        reconnect_interval=0.2,
        queue_type="quorum" if QUEUE_TYPE == "quorum" else "classic",
    ),
    worker_count=WORKERS,
    lease_seconds=LEASE,
    poll_interval=0.5,
    tracer_provider=tracer_provider,
)
store = aioredis.Redis.from_url(REDIS_URL)


async def _done(key: str) -> None:
    async with store.pipeline(transaction=False) as pipe:
        pipe.hincrby(f"{NS}:done", key, 1)
        pipe.sadd(f"{NS}:pids", os.getpid())
        await pipe.execute()


@provider.task(name="record")
async def record(key: str) -> None:
    await _done(key)


@provider.task(name="slow_record")
async def slow_record(key: str, seconds: float = 0.05) -> None:
    """Notes any second run of ``key`` that starts while one is still running."""
    await store.incr(f"{NS}:started:{key}")
    if not await store.sadd(f"{NS}:running", key):
        await store.rpush(f"{NS}:overlaps", key)
    try:
        await asyncio.sleep(seconds)
        await _done(key)
    finally:
        await store.srem(f"{NS}:running", key)


@provider.task(name="hang_once")
async def hang_once(key: str) -> None:
    """Hangs on its first run (the test SIGKILLs that process); completes on the next."""
    if await store.incr(f"{NS}:started:{key}") == 1:
        await store.set(f"{NS}:hanging", os.getpid())
        await asyncio.sleep(3600)
    await _done(key)


@provider.task(name="exit_worker")
async def exit_worker(key: str) -> None:
    """Kills the whole worker process, every time (a segfaulting C extension, say)."""
    await store.incr(f"{NS}:started:{key}")
    os._exit(70)


@provider.task(name="spoils_its_args", max_retries=3, retry_backoff=0.1)
async def spoils_its_args(key: str, seen: list[float]) -> None:
    """Puts NaN into its own arguments, then fails: the job cannot be written back."""
    await store.incr(f"{NS}:started:{key}")
    seen.append(float("nan"))
    raise RuntimeError(f"failed after spoiling {key}")


@provider.task(name="always_fails", max_retries=1, retry_backoff=0.1)
async def always_fails(key: str) -> None:
    await store.incr(f"{NS}:started:{key}")
    raise RuntimeError(f"boom {key}")


if __name__ == "__main__":
    provider.run()
