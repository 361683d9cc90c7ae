"""The seed's multi-backend YAML: a primary Redis backend and a ``notifications`` RabbitMQ one."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from lexigram.tasks import TaskProvider
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.testing import eventually

# The seed's document, plus queue names so that test runs do not share queues.
CONFIG = """
tasks:
  backends:
    - name: primary
      primary: true
      type: redis
      redis_url: "${REDIS_URL}"
      queue_name: "${PRIMARY_QUEUE}"
    - name: notifications
      type: rabbitmq
      amqp_url: "${AMQP_URL}"
      queue_name: "${NOTIFY_QUEUE}"
  worker:
    worker_count: 4
    poll_interval: 0.1
"""


async def test_jobs_run_on_both_backends_routed_by_task(
    redis_url: str,
    amqp_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("AMQP_URL", amqp_url)
    monkeypatch.setenv("PRIMARY_QUEUE", f"lxtest-primary-{suffix}")
    monkeypatch.setenv("NOTIFY_QUEUE", f"lxtest-notify-{suffix}")
    path = tmp_path / "lexigram.yaml"
    path.write_text(CONFIG)

    provider = TaskProvider.from_config(path)
    ran: list[tuple[str, str]] = []

    @provider.task(name="shop.place_order")
    async def place_order(order_id: int) -> None:
        ran.append(("place_order", str(order_id)))

    @provider.task(name="shop.notify", backend="notifications")
    async def notify(to: str) -> None:
        ran.append(("notify", to))

    redis_queue = provider.backends["primary"]
    rabbit_queue = provider.backends["notifications"]
    assert isinstance(redis_queue, RedisTaskQueue)
    assert isinstance(rabbit_queue, RabbitMQTaskQueue)
    try:
        await provider.connect()
        await place_order.enqueue(7)
        await notify.enqueue("a@b.c")
        # Each job waits in its own broker before any worker runs.
        waiting = QueueCounts(ready=1, delayed=0, running=0, failed=0)
        assert await provider.counts() == {"primary": waiting, "notifications": waiting}

        await provider.start()
        await eventually(lambda: len(ran) == 2, timeout=20)
        assert sorted(ran) == [("notify", "a@b.c"), ("place_order", "7")]
        empty = QueueCounts(ready=0, delayed=0, running=0, failed=0)
        await eventually(
            lambda: _equal(provider.counts(), {"primary": empty, "notifications": empty}),
            timeout=10,
        )
    finally:
        await provider.stop()
        await redis_queue.connect()
        await redis_queue.purge()
        await redis_queue.disconnect()
        await rabbit_queue.connect()
        await rabbit_queue.delete_topology()
        await rabbit_queue.disconnect()


async def _equal(awaitable: object, expected: object) -> bool:
    return bool(await awaitable == expected)  # type: ignore[misc]
