"""Fixtures of the RabbitMQ tests: unique queues, worker processes, broker-side helpers.

Worker processes record what their tasks did in Redis (keys under ``ns:``),
which is bookkeeping for the assertions only: the jobs travel through
RabbitMQ.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from lexigram.tasks.rabbitmq import RabbitMQTaskQueue

WORKER_APP = Path(__file__).with_name("_worker_app.py")
FOREIGN_CLIENT = Path(__file__).with_name("_foreign_client.py")

Spawn = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def ns() -> str:
    """A Redis key namespace and RabbitMQ connection name no other test uses."""
    return f"lxrmq-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def queue_name() -> str:
    return f"lxtest-{uuid.uuid4().hex[:10]}"


@pytest_asyncio.fixture
async def queue(amqp_url: str, queue_name: str) -> AsyncIterator[RabbitMQTaskQueue]:
    """A connected queue with a unique name; its topology is deleted afterwards."""
    q = RabbitMQTaskQueue(amqp_url=amqp_url, queue_name=queue_name)
    async with q:
        try:
            yield q
        finally:
            await q.delete_topology()


@pytest_asyncio.fixture
async def client(redis_url: str, ns: str) -> AsyncIterator[aioredis.Redis]:
    """Reads what worker processes recorded; deletes the test's ``ns:*`` keys afterwards."""
    connection = aioredis.Redis.from_url(redis_url)
    try:
        yield connection
    finally:
        keys = [key async for key in connection.scan_iter(match=f"{ns}:*", count=1000)]
        if keys:
            await connection.delete(*keys)
        await connection.aclose()


@pytest.fixture
def spawn(amqp_url: str, redis_url: str, ns: str) -> Iterator[Spawn]:
    """Start worker processes (``_worker_app.py``); any still running at the end is killed."""
    started: list[subprocess.Popen[bytes]] = []

    def start(
        queue_name: str,
        *,
        lease_seconds: float = 30.0,
        workers: int = 10,
        name: str = "",
        queue_type: str = "classic",
    ) -> subprocess.Popen[bytes]:
        args = [amqp_url, redis_url, queue_name, ns, str(lease_seconds), str(workers)]
        command = [sys.executable, str(WORKER_APP), *args, name or ns, queue_type]
        process = subprocess.Popen(command)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


class Broker:
    """The broker runs on this machine: ``rabbitmqctl`` reaches it."""

    async def rabbitmqctl(self, *args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            "rabbitmqctl", "-q", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await process.communicate()
        assert process.returncode == 0, f"rabbitmqctl {' '.join(args)} failed: {err.decode()}"
        return out.decode()

    async def connection_pids(self, name: str) -> list[str]:
        """Broker-side ids of the open connections whose ``connection_name`` is ``name``."""
        out = await self.rabbitmqctl("list_connections", "pid", "client_properties")
        return [line.split("\t", 1)[0] for line in out.splitlines() if f'"{name}"' in line]

    async def close_connections(self, name: str) -> list[str]:
        """Close (as an operator would) every connection named ``name``; their ids."""
        pids = await self.connection_pids(name)
        for pid in pids:
            await self.rabbitmqctl("close_connection", pid, "closed by a lexigram test")
        return pids


@pytest.fixture
def broker() -> Broker:
    return Broker()
