"""Fixtures of the RabbitMQ tests: unique queues, worker processes, broker-side helpers."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.testing import BackendSpec, WorkerProcesses

FOREIGN_CLIENT = Path(__file__).with_name("_foreign_client.py")


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


@pytest.fixture
def workers(amqp_url: str, queue_name: str, ns: str, tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Worker processes (``lexigram.tasks.testing.worker_app``) on ``queue_name``; their
    AMQP connection is named ``ns`` (so a test can close exactly it with ``rabbitmqctl``).
    Any still running at the end is killed."""
    options = {
        "amqp_url": amqp_url,
        "queue_name": queue_name,
        "connection_name": ns,
        "reconnect_interval": 0.2,
    }
    started = WorkerProcesses(
        BackendSpec("lexigram.tasks.rabbitmq:RabbitMQTaskQueue", options),
        tmp_path,
        poll_interval=0.5,
    )
    try:
        yield started
    finally:
        started.close()


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
