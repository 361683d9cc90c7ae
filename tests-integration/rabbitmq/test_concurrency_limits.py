"""Concurrency limits on RabbitMQ: refused without a shared limiter, kept through Redis with one."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from lexigram.tasks import ConfigurationError, TaskProvider
from lexigram.tasks.config import load_config
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.redis.concurrency import RedisConcurrencyLimiter
from lexigram.tasks.testing import eventually

CONFIG = """
tasks:
  backend:
    type: rabbitmq
    amqp_url: ${AMQP_URL}
    queue_name: ${QUEUE}
  worker:
    worker_count: 6
  concurrency_limiter:
    type: redis
    redis_url: ${REDIS_URL}
    namespace: ${NS}
"""


async def test_a_limited_task_is_refused_at_start_without_a_shared_limiter(
    amqp_url: str, queue_name: str
) -> None:
    provider = TaskProvider(queue=RabbitMQTaskQueue(amqp_url=amqp_url, queue_name=queue_name))

    @provider.task(name="capped", max_concurrency=2)
    async def capped() -> None:
        """Never runs."""

    with pytest.raises(ConfigurationError, match=r"capped declare.*set concurrency_limiter"):
        await provider.start()
    await provider.stop()


async def test_the_limit_holds_through_a_redis_limiter_from_yaml(
    tmp_path: Path, amqp_url: str, redis_url: str, queue_name: str, ns: str
) -> None:
    path = tmp_path / "lexigram.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    env = {"AMQP_URL": amqp_url, "QUEUE": queue_name, "REDIS_URL": redis_url, "NS": ns}
    provider = load_config(path, env=env).create_provider()
    assert isinstance(provider.concurrency_limiter, RedisConcurrencyLimiter)
    now = most = done = 0

    @provider.task(name="capped", max_concurrency=2)
    async def capped() -> None:
        nonlocal now, most, done
        now += 1
        most = max(most, now)
        await asyncio.sleep(0.02)
        now -= 1
        done += 1

    async with provider:
        for _ in range(12):
            await capped.enqueue()
        await eventually(lambda: done == 12, timeout=60)
        queue = provider.queue
        assert isinstance(queue, RabbitMQTaskQueue)
        await queue.delete_topology()
    assert most == 2
