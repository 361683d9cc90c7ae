"""Several node URLs against the one test broker, each reached through its own TCP proxy.

Each proxy stands for a node: cutting it is that node going away. The
queue must connect through the first node that answers, and after a cut
reconnect through the next one by itself, with its consumers back.
"""

from __future__ import annotations

import logging
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from lexigram.tasks.job import Job
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.redact import redact_url
from lexigram.tasks.testing import eventually

sys.path.insert(0, str(Path(__file__).parent))
from test_connection_logs import Proxy, _via  # the proxy those tests use


@pytest_asyncio.fixture
async def nodes(amqp_url: str) -> AsyncIterator[list[Proxy]]:
    parts = urlsplit(amqp_url)
    proxies = [Proxy(parts.hostname or "127.0.0.1", parts.port or 5672) for _ in range(2)]
    for proxy in proxies:
        await proxy.start()
    yield proxies
    for proxy in proxies:
        await proxy.cut()


def _shown(amqp_url: str, port: int) -> str:
    return redact_url(_via(amqp_url, port))


def _refused_port() -> socket.socket:
    """A loopback port bound but not listening: a node that is down."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


async def test_a_queue_moves_to_the_next_node_when_its_node_goes_away(
    amqp_url: str, nodes: list[Proxy], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lexigram.tasks.rabbitmq")
    first, second = nodes
    with _refused_port() as down:
        urls = [_via(amqp_url, down.getsockname()[1]), *(_via(amqp_url, p.port) for p in nodes)]
        name = f"lxtest-{uuid.uuid4().hex[:10]}"
        queue = RabbitMQTaskQueue(urls, name, reconnect_interval=0.2, connect_timeout=5)
        async with queue:
            try:
                assert queue.node == _shown(amqp_url, first.port)  # the down node is skipped
                await queue.enqueue(Job(task="t", queue=name, args=[1]))
                [one] = await queue.dequeue(wait=5)
                await queue.ack(one)

                await first.cut()
                await eventually(
                    lambda: (
                        queue.node == _shown(amqp_url, second.port)
                        and queue._connection is not None
                        and queue._connection.connected.is_set()
                    ),
                    timeout=10,
                    message="the queue did not reconnect through the second node",
                )
                await queue.enqueue(Job(task="t", queue=name, args=[2]))
                [two] = await queue.dequeue(wait=5)
                assert two.job is not None and two.job.args == [2]
                await queue.ack(two)
            finally:
                await queue.delete_topology()
    lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    assert len(lost) == 1 and "to each of the 3 nodes in turn" in lost[0], lost
