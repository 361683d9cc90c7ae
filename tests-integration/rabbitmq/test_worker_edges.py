"""Worker processes against jobs that fight back: poison messages, jobs that kill their
worker, jobs that cannot be written back. Classic and quorum queues."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import AsyncIterator, Callable

import aio_pika
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from lexigram.tasks.job import Job
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.testing import eventually

Spawn = Callable[..., "subprocess.Popen[bytes]"]
LOST_LEASE_RETRIES = 2  # the worker's default


@pytest_asyncio.fixture(params=["classic", "quorum"])
async def typed_queue(
    request: pytest.FixtureRequest, amqp_url: str, queue_name: str
) -> AsyncIterator[RabbitMQTaskQueue]:
    q = RabbitMQTaskQueue(amqp_url=amqp_url, queue_name=queue_name, queue_type=request.param)
    async with q:
        try:
            yield q
        finally:
            await q.delete_topology()


def _job(queue: RabbitMQTaskQueue, task: str, *args: object, max_retries: int = 0) -> Job:
    return Job(task=task, args=list(args), queue=queue.queue_name, max_retries=max_retries)


async def _done(client: aioredis.Redis, ns: str) -> int:
    return int(await client.hlen(f"{ns}:done"))


async def _started(client: aioredis.Redis, ns: str, key: str) -> int:
    return int(await client.get(f"{ns}:started:{key}") or 0)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


async def _publish_raw(amqp_url: str, queue: str, bodies: list[bytes]) -> None:
    """A foreign producer: plain aio-pika, no lexigram code on this path."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for body in bodies:
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, routing_key=queue)


async def test_a_job_that_kills_its_worker_is_dead_lettered_and_good_jobs_run(
    typed_queue: RabbitMQTaskQueue, client: aioredis.Redis, ns: str, spawn: Spawn
) -> None:
    """Every worker life that leases the killer dies; a supervisor starts the next one."""
    queue = typed_queue
    await queue.enqueue(_job(queue, "exit_worker", "killer"))
    await queue.enqueue_many([_job(queue, "record", f"good{i}") for i in range(50)])

    async def finished() -> bool:
        failed = (await queue.counts()).failed
        return failed == 1 and await _done(client, ns) == 50

    deaths = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not await finished():
        assert deaths <= 1 + LOST_LEASE_RETRIES, "the killer kept running"
        assert loop.time() < deadline, (
            f"not drained in time: {deaths} deaths, killer started "
            f"{await _started(client, ns, 'killer')} times, {await _done(client, ns)} done, "
            f"{await queue.counts()}; dead letters: {await queue.dead_letters()}"
        )
        worker = spawn(queue.queue_name, workers=4, queue_type=queue.queue_type)

        async def exited_or_finished(worker: subprocess.Popen[bytes] = worker) -> bool:
            return worker.poll() is not None or await finished()

        remaining = max(deadline - loop.time(), 1.0)
        await eventually(exited_or_finished, timeout=remaining, interval=0.05)
        if worker.poll() is not None:
            assert worker.returncode == 70, f"the worker exited with {worker.returncode}"
            deaths += 1
        else:
            _stop(worker)

    assert await _started(client, ns, "killer") == 1 + LOST_LEASE_RETRIES
    assert deaths == 1 + LOST_LEASE_RETRIES
    assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=1)
    [dead] = await queue.dead_letters()
    assert dead.reason.startswith("LeaseExpired"), dead.reason
    assert json.loads(dead.payload)["task"] == "exit_worker"


async def test_poison_messages_are_dead_lettered_and_the_jobs_behind_them_run(
    typed_queue: RabbitMQTaskQueue,
    amqp_url: str,
    client: aioredis.Redis,
    ns: str,
    spawn: Spawn,
) -> None:
    queue = typed_queue
    deep = b'{"id":"deep","task":"record","args":' + b"[" * 1000 + b"]" * 1000 + b"}"
    nan = b'{"id":"nan","task":"record","args":[NaN]}'
    await _publish_raw(amqp_url, queue.queue_name, [deep, nan])
    await queue.enqueue_many([_job(queue, "record", f"good{i}") for i in range(200)])

    worker = spawn(queue.queue_name, workers=10, queue_type=queue.queue_type)
    await eventually(lambda: _all_done(client, ns, 200), timeout=60)
    await eventually(lambda: _failed(queue, 2), timeout=30)
    _stop(worker)  # anything left unacknowledged would now be ready again

    assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=2)
    dead = {d.payload: d for d in await queue.dead_letters()}
    assert set(dead) == {deep, nan}
    assert dead[deep].reason.startswith("MalformedJobError: "), dead[deep].reason
    assert "nest" in dead[deep].reason
    assert "NaN" in dead[nan].reason, dead[nan].reason
    assert all(d.job_id is None for d in dead.values())


async def test_a_job_that_cannot_be_written_back_runs_once_and_is_dead_lettered(
    typed_queue: RabbitMQTaskQueue, client: aioredis.Redis, ns: str, spawn: Spawn
) -> None:
    """Its retry cannot be published (NaN in its arguments): it must not run again at
    every lease; its message as received goes to the dead letters with the reason."""
    queue = typed_queue
    job = _job(queue, "spoils_its_args", "spoiled", [], max_retries=3)
    await queue.enqueue(job)
    worker = spawn(queue.queue_name, lease_seconds=1.0, queue_type=queue.queue_type)
    await eventually(lambda: _failed(queue, 1), timeout=30)
    _stop(worker)

    assert await _started(client, ns, "spoiled") == 1
    [dead] = await queue.dead_letters()
    assert dead.job_id == job.id
    assert dead.payload == job.to_bytes()
    assert "JobSerializationError: the job could not be written back" in dead.reason
    assert "RuntimeError: failed after spoiling spoiled" in dead.reason


async def _all_done(client: aioredis.Redis, ns: str, expected: int) -> bool:
    return await _done(client, ns) >= expected


async def _failed(queue: RabbitMQTaskQueue, expected: int) -> bool:
    return (await queue.counts()).failed == expected
