"""The dashboard on RabbitMQ paired with a Redis job state store (the listing comes from it)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from lexigram.tasks import JobState, TaskProvider
from lexigram.tasks.dashboard import dashboard
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue


@pytest.fixture
async def provider(amqp_url: str, redis_url: str) -> AsyncIterator[TaskProvider]:
    unique = f"lxdash-{uuid.uuid4().hex[:10]}"
    store = {"type": "redis", "redis_url": redis_url, "namespace": unique}
    queue = RabbitMQTaskQueue(amqp_url, queue_name=unique, state_store=store)
    made = TaskProvider(queue=queue)

    @made.task(name="mail.send")
    async def send(to: str) -> None: ...

    await made.connect()
    try:
        yield made
    finally:
        await queue.delete_topology()
        await made.disconnect()
        client = Redis.from_url(redis_url)
        keys = [k async for k in client.scan_iter(match=f"{unique}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_jobs_listed_shown_and_cancelled_through_the_paired_store(
    provider: TaskProvider,
) -> None:
    handles = [await provider.enqueue("mail.send", f"user{n}@example.com") for n in range(3)]
    app = dashboard(provider, allow_actions=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        overview = await http.get("/")
        assert overview.status_code == 200 and "rabbitmq" in overview.text
        listing = await http.get("/jobs?state=queued")
        assert all(h.id in listing.text for h in handles)
        detail = await http.get(f"/jobs/{handles[0].id}")
        assert "user0@example.com" in detail.text and "mail.send" in detail.text
        token = http.cookies["lexigram_dashboard_csrf"]
        done = await http.post(f"/jobs/{handles[0].id}/cancel", data={"csrf_token": token})
        assert done.status_code == 303
        assert "Job cancelled" in (await http.get(done.headers["location"])).text
    info = await provider.get_job(handles[0].id)
    assert info is not None and info.state is JobState.CANCELLED
