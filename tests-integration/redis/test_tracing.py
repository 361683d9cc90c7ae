"""One trace runs from a producer's request, through Redis, into a worker process."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from lexigram.tasks import TaskProvider
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.testing import eventually


async def test_producer_trace_continues_in_the_worker_process(
    queue: RedisTaskQueue,
    redis_url: str,
    client: aioredis.Redis,
    ns: str,
    spawn: Callable[..., Any],
) -> None:
    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    producer = TaskProvider(
        queue=RedisTaskQueue(redis_url=redis_url, queue_name=queue.queue_name),
        tracer_provider=tracing,
        strict=False,
    )
    await producer.connect()
    worker = spawn(queue)
    try:
        with tracing.get_tracer("test").start_as_current_span("GET /signup") as request:
            await producer.enqueue("record", "traced")
        await eventually(lambda: client.hget(f"{ns}:done", "traced"), timeout=30)
        [process] = await eventually(lambda: _consumer_spans(client, ns), timeout=10)
    finally:
        await producer.disconnect()
        worker.terminate()
        worker.wait(timeout=30)

    [send] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert send.context is not None
    assert request.get_span_context().trace_id == send.context.trace_id
    assert process["name"] == f"process {queue.queue_name}"
    assert process["trace_id"] == send.context.trace_id
    assert process["parent_span_id"] == send.context.span_id
    assert send.context.span_id in process["links"]


async def _consumer_spans(client: aioredis.Redis, ns: str) -> list[dict[str, Any]]:
    spans = [json.loads(raw) for raw in await client.lrange(f"{ns}:spans", 0, -1)]
    return [span for span in spans if span["kind"] == "CONSUMER"]
