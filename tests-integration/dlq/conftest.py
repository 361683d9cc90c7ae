"""Real backends paired with a persistent dead-letter storage, one fresh set per test.

- redis: ``RedisTaskQueue`` + ``RedisDeadLetterStorage`` (unique queue name and prefix);
- postgres: ``PostgresTaskQueue`` + ``PostgresDeadLetterStorage`` in one throw-away
  schema (same DSN: replays run in one transaction);
- rabbitmq: ``RabbitMQTaskQueue`` + ``RedisDeadLetterStorage``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from lexigram.tasks import TaskQueueProtocol
from lexigram.tasks.dlq import (
    DeadLetterStorage,
    FailureFilter,
    PostgresDeadLetterStorage,
    RedisDeadLetterStorage,
)
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.redis import RedisTaskQueue

BACKENDS = ["redis", "postgres", "rabbitmq"]


@dataclass
class Backend:
    """A queue, a storage, and how a foreign producer writes raw bytes into the queue."""

    name: str
    queue: TaskQueueProtocol
    storage: DeadLetterStorage
    push_raw: Callable[[bytes], Awaitable[Any]]
    #: The parameters, for a subprocess that builds its own queue and storage.
    spec: dict[str, str]


@pytest.fixture
def urls(redis_url: str, postgres_dsn: str, amqp_url: str) -> dict[str, str]:
    return {"redis": redis_url, "postgres": postgres_dsn, "rabbitmq": amqp_url}


@pytest_asyncio.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, urls: dict[str, str]) -> AsyncIterator[Backend]:
    async for made in open_backend(request.param, urls):
        yield made


async def open_backend(kind: str, urls: dict[str, str]) -> AsyncIterator[Backend]:
    name = f"dlq-{uuid.uuid4().hex[:10]}"
    if kind == "postgres":
        dsn = urls["postgres"]
        schema = f"dlq_it_{uuid.uuid4().hex[:10]}"

        queue = PostgresTaskQueue(dsn, name, schema=schema)
        await queue.connect()
        spec = {"kind": "postgres", "dsn": dsn, "schema": schema, "queue_name": name}
        storage = PostgresDeadLetterStorage(dsn, schema=schema)
        made = Backend("postgres", queue, storage, queue.push_raw, spec)
        await made.storage.connect()
        try:
            yield made
        finally:
            await made.storage.disconnect()
            await queue.disconnect()
            connection = await asyncpg.connect(dsn)
            try:
                await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await connection.close()
        return

    redis_url = urls["redis"]
    prefix = f"test-dlq:{uuid.uuid4().hex}"

    storage = RedisDeadLetterStorage(redis_url=redis_url, prefix=prefix)
    if kind == "redis":
        rq = RedisTaskQueue(redis_url=redis_url, queue_name=name)
        spec = {"kind": "redis", "redis_url": redis_url, "prefix": prefix, "queue_name": name}
        made = Backend("redis", rq, storage, rq.push_raw, spec)
    else:
        amqp_url = urls["rabbitmq"]

        async def push_to_rabbitmq(payload: bytes) -> None:
            connection = await aio_pika.connect(amqp_url)
            async with connection:
                channel = await connection.channel()
                message = aio_pika.Message(payload, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
                await channel.default_exchange.publish(message, routing_key=name)

        spec = {
            "kind": "rabbitmq",
            "amqp_url": amqp_url,
            "redis_url": redis_url,
            "prefix": prefix,
            "queue_name": name,
        }
        rabbit = RabbitMQTaskQueue(amqp_url=amqp_url, queue_name=name)
        made = Backend("rabbitmq", rabbit, storage, push_to_rabbitmq, spec)
    await made.queue.connect()
    await made.storage.connect()
    try:
        yield made
    finally:
        await made.storage.purge(FailureFilter())
        await made.storage.disconnect()
        await made.queue.connect()  # a test may have disconnected it
        if isinstance(made.queue, RedisTaskQueue):
            await made.queue.purge()
            client = aioredis.Redis.from_url(redis_url)
            try:
                assert await client.keys(f"{prefix}:*") == []
            finally:
                await client.aclose()
        elif isinstance(made.queue, RabbitMQTaskQueue):
            await made.queue.delete_topology()
        await made.queue.disconnect()
