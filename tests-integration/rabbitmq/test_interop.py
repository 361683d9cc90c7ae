"""Jobs cross between lexigram and a client that knows only AMQP and the JSON job format.

The foreign side (``_foreign_client.py``) runs in its own process with aio-pika
alone and checks that it never imported lexigram.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from lexigram.tasks import TaskProvider
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.testing import eventually

FOREIGN_CLIENT = Path(__file__).with_name("_foreign_client.py")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def _foreign(*args: str) -> list[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(FOREIGN_CLIENT),
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode().splitlines()


def _provider(queue: RabbitMQTaskQueue, tracing: TracerProvider | None = None) -> TaskProvider:
    own = RabbitMQTaskQueue(amqp_url=queue.amqp_url, queue_name=queue.queue_name)
    return TaskProvider(queue=own, worker_count=2, poll_interval=0.1, tracer_provider=tracing)


async def test_foreign_producer_to_lexigram_worker(queue: RabbitMQTaskQueue) -> None:
    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    provider = _provider(queue, tracing)
    greeted: list[str] = []

    @provider.task(name="interop.greet")
    async def greet(name: str, punctuation: str = ".") -> str:
        greeted.append(f"hello {name}{punctuation}")
        return greeted[-1]

    async with provider:
        ids = await _foreign("produce", queue.amqp_url, queue.queue_name, TRACEPARENT, "ada", "bo")
        await eventually(lambda: len(greeted) == 2, timeout=20)
    assert sorted(greeted) == ["hello ada!", "hello bo!"]
    assert len(ids) == 2
    # The trace context came only in the AMQP headers; the worker continued it.
    processed = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert len(processed) == 2
    for span in processed:
        assert span.context is not None
        assert f"{span.context.trace_id:032x}" == TRACEPARENT.split("-")[1]
        assert span.parent is not None
        assert f"{span.parent.span_id:016x}" == TRACEPARENT.split("-")[2]
    assert (await queue.counts()).pending == 0


async def test_lexigram_producer_to_foreign_consumer(queue: RabbitMQTaskQueue) -> None:
    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    producer = TaskProvider(queue=queue, tracer_provider=tracing, strict=False)
    handles = [
        await producer.enqueue("billing.invoice", 42, currency="EUR"),
        await producer.enqueue("billing.invoice", 43, currency="USD"),
    ]

    lines = await _foreign("consume", queue.amqp_url, queue.queue_name, "2")
    received: list[dict[str, Any]] = [json.loads(line) for line in lines]
    assert [r["message_id"] for r in received] == [h.id for h in handles]
    for record, args, currency in zip(received, (42, 43), ("EUR", "USD"), strict=True):
        job = record["job"]
        assert record["content_type"] == "application/json"
        assert record["type"] == "billing.invoice"
        assert job["task"] == "billing.invoice"
        assert job["args"] == [args]
        assert job["kwargs"] == {"currency": currency}
        assert job["queue"] == queue.queue_name
        assert job["headers"]["traceparent"] == record["amqp_traceparent"]
    sends = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    trace_ids = {f"{s.context.trace_id:032x}" for s in sends if s.context is not None}
    assert {r["amqp_traceparent"].split("-")[1] for r in received} == trace_ids
    assert (await queue.counts()).pending == 0
