"""Real worker processes on one RabbitMQ queue: sharing, SIGKILL, closed connections, tracing."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import aio_pika
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from lexigram.tasks import TaskProvider
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.testing import eventually

EMPTY = QueueCounts(ready=0, delayed=0, running=0, failed=0)
Spawn = Callable[..., "subprocess.Popen[bytes]"]


def _jobs(
    queue: RabbitMQTaskQueue, task: str, count: int, max_retries: int = 0, **kwargs: Any
) -> list[Job]:
    return [
        Job(
            task=task,
            args=[f"k{i}"],
            kwargs=dict(kwargs),
            queue=queue.queue_name,
            max_retries=max_retries,
        )
        for i in range(count)
    ]


async def _consumers(amqp_url: str, queue_name: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue_name, passive=True)
        return declared.declaration_result.consumer_count or 0


async def _done(client: aioredis.Redis, ns: str) -> dict[str, int]:
    raw = await client.hgetall(f"{ns}:done")
    return {k.decode(): int(v) for k, v in raw.items()}


async def _complete(client: aioredis.Redis, ns: str, count: int) -> dict[str, int] | None:
    done = await _done(client, ns)
    return done if len(done) >= count else None


async def _is(awaitable: Any, expected: object) -> bool:
    return bool(await awaitable == expected)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, "the worker did not shut down cleanly on SIGTERM"


async def test_two_worker_processes_share_a_queue_and_run_each_job_once(
    queue: RabbitMQTaskQueue, amqp_url: str, client: aioredis.Redis, ns: str, spawn: Spawn
) -> None:
    workers = [spawn(queue.queue_name), spawn(queue.queue_name)]
    await eventually(lambda: _is(_consumers(amqp_url, queue.queue_name), 2), timeout=30)

    await queue.enqueue_many(_jobs(queue, "slow_record", 300, seconds=0.01))

    done = await eventually(lambda: _complete(client, ns, 300), timeout=30)
    assert set(done.values()) == {1}, "a job ran more than once"
    assert await client.scard(f"{ns}:pids") == 2, "both processes should have taken jobs"
    assert await client.llen(f"{ns}:overlaps") == 0
    for worker in workers:
        _stop(worker)
    assert await queue.counts() == EMPTY


async def test_sigkilled_worker_job_is_redelivered_and_completes_exactly_once(
    queue: RabbitMQTaskQueue, client: aioredis.Redis, ns: str, spawn: Spawn
) -> None:
    victim = spawn(queue.queue_name)
    # The killed run uses up an attempt, as on every backend: allow a retry.
    [job] = _jobs(queue, "hang_once", 1, max_retries=1)
    await queue.enqueue(job)
    hanging_pid = await eventually(lambda: client.get(f"{ns}:hanging"), timeout=30)
    assert int(hanging_pid) == victim.pid
    assert (await queue.counts()).ready == 0, "the job is held by the worker"

    victim.kill()
    victim.wait(timeout=10)
    # The connection died with the process: the broker puts the job back at once.
    await eventually(lambda: _is(queue.counts(), QueueCounts(1, 0, 0, 0)), timeout=10)

    survivor = spawn(queue.queue_name)
    done = await eventually(lambda: _complete(client, ns, 1), timeout=30)
    assert done == {"k0": 1}
    assert int(await client.get(f"{ns}:started:k0")) == 2
    await eventually(lambda: _is(queue.counts(), EMPTY), timeout=10)
    _stop(survivor)
    assert await _done(client, ns) == {"k0": 1}, "the job completed more than once"


async def test_closed_connection_loses_no_job_and_runs_none_twice_at_once(
    queue: RabbitMQTaskQueue, client: aioredis.Redis, ns: str, spawn: Spawn, broker: Any
) -> None:
    worker = spawn(queue.queue_name, workers=20)
    [pid] = await eventually(lambda: broker.connection_pids(ns), timeout=30)
    await queue.enqueue_many(_jobs(queue, "slow_record", 160, seconds=1.0))
    await eventually(lambda: _started_at_least(client, ns, 30), timeout=30)

    await broker.rabbitmqctl("close_connection", pid, "closed by a lexigram test")
    running = await client.scard(f"{ns}:running")
    remaining = 160 - len(await _done(client, ns))
    assert running > 0, "the connection should close while jobs run"
    assert remaining > running, "the connection should close while jobs wait"

    # The worker reconnects (a new connection under the same name) and carries on.
    await eventually(lambda: _reconnected(broker, ns, pid), timeout=30)
    done = await eventually(lambda: _complete(client, ns, 160), timeout=60)
    assert set(done.values()) == {1}, "a job completed twice"
    assert await client.lrange(f"{ns}:overlaps", 0, -1) == [], "a job ran twice at once"
    await eventually(lambda: _is(queue.counts(), EMPTY), timeout=10)
    _stop(worker)
    assert set((await _done(client, ns)).values()) == {1}


async def test_producer_trace_continues_in_the_worker_process(
    queue: RabbitMQTaskQueue, amqp_url: str, client: aioredis.Redis, ns: str, spawn: Spawn
) -> None:
    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    producer = TaskProvider(
        queue=RabbitMQTaskQueue(amqp_url=amqp_url, queue_name=queue.queue_name),
        tracer_provider=tracing,
        strict=False,
    )
    await producer.connect()
    worker = spawn(queue.queue_name)
    try:
        with tracing.get_tracer("test").start_as_current_span("GET /signup") as request:
            await producer.enqueue("record", "traced")
        await eventually(lambda: client.hget(f"{ns}:done", "traced"), timeout=30)
        spans = await eventually(lambda: _worker_spans(client, ns, "CONSUMER"), timeout=10)
    finally:
        await producer.disconnect()
        _stop(worker)

    [send] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert send.context is not None
    assert request.get_span_context().trace_id == send.context.trace_id
    [process] = [s for s in spans if s["kind"] == "CONSUMER"]
    assert process["name"] == f"process {queue.queue_name}"
    assert process["trace_id"] == send.context.trace_id
    assert process["parent_span_id"] == send.context.span_id
    assert process["attributes"]["messaging.system"] == "rabbitmq"


async def _started_at_least(client: aioredis.Redis, ns: str, count: int) -> bool:
    keys = [key async for key in client.scan_iter(match=f"{ns}:started:*", count=1000)]
    return len(keys) >= count


async def _reconnected(broker: Any, name: str, old_pid: str) -> bool:
    pids = await broker.connection_pids(name)
    return bool(pids) and old_pid not in pids


async def _worker_spans(client: aioredis.Redis, ns: str, kind: str) -> list[dict[str, Any]]:
    """The worker's exported spans, once one of ``kind`` is among them."""
    spans = [json.loads(raw) for raw in await client.lrange(f"{ns}:spans", 0, -1)]
    return spans if any(span["kind"] == kind for span in spans) else []
