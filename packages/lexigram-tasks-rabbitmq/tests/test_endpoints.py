"""Several nodes in ``amqp_url``: parsing, the waits between attempts, rotation, quorum replicas."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from lexigram.tasks import TaskProvider
from lexigram.tasks.errors import BackendConnectionError, ConfigurationError
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue, topology
from lexigram.tasks.rabbitmq.endpoints import Endpoints, RotatingConnection, UnreachableError


def test_one_url_with_several_hosts_is_one_url_per_node() -> None:
    endpoints = Endpoints.parse("amqps://app:pw@r1:5671,r2, [::1]:5672/prod?heartbeat=30")
    assert endpoints.urls == (
        "amqps://app:pw@r1:5671/prod?heartbeat=30",
        "amqps://app:pw@r2/prod?heartbeat=30",
        "amqps://app:pw@[::1]:5672/prod?heartbeat=30",
    )


def test_a_list_of_urls_keeps_its_order_and_drops_repeats() -> None:
    endpoints = Endpoints.parse(
        ["amqp://a@h2:5672/", "amqp://b@h1:5672,h2:5672/", "amqp://a@h2:5672/"]
    )
    assert endpoints.urls == ("amqp://a@h2:5672/", "amqp://b@h1:5672/", "amqp://b@h2:5672/")


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ([], "non-empty list"),
        ("redis://:pw@h1:6379/0", "must start with amqp://"),
        ("amqp://u:pw@h1:5672,,h2:5672/", "empty host"),
        ("amqp://u:pw@h1:56x2/", "Port could not be cast"),
        (["amqp://u:pw@h1/", 5672], "entries must be amqp:// URLs"),
    ],
)
def test_bad_node_lists_are_configuration_errors_without_the_password(
    given: object, says: str
) -> None:
    with pytest.raises(ConfigurationError, match=says) as caught:
        RabbitMQTaskQueue(given)  # type: ignore[arg-type]
    assert "pw" not in str(caught.value).replace("amqp://", "")


def test_several_urls_in_the_configuration_file() -> None:
    backend: dict[str, Any] = {"type": "rabbitmq", "queue_name": "q"}
    for value in ("amqp://u:pw@h1:5672,h2:5673/", ["amqp://u:pw@h1:5672/", "amqp://u:pw@h2:5673/"]):
        backend["amqp_url"] = value
        queue = TaskProvider.from_config({"tasks": {"backend": backend}}).queue
        assert isinstance(queue, RabbitMQTaskQueue)
        assert queue.endpoints.urls == ("amqp://u:pw@h1:5672/", "amqp://u:pw@h2:5673/")
        assert "pw" not in repr(queue)


def _rotating(nodes: int, base: float, most: float | None = None) -> RotatingConnection:
    urls = [f"amqp://guest:guest@127.0.0.1:{5681 + i}/" for i in range(nodes)]
    return RotatingConnection(
        Endpoints(tuple(urls)), reconnect_interval=base, max_reconnect_interval=most
    )


async def test_the_next_node_is_tried_at_once_and_each_failed_round_waits_longer() -> None:
    connection = _rotating(3, 0.5, most=4)
    waits = [connection.wait_after(failures) for failures in range(1, 16)]
    assert waits == [0, 0, 0.5, 0, 0, 1, 0, 0, 2, 0, 0, 4, 0, 0, 4]


async def test_one_node_waits_reconnect_interval_as_before_unless_given_a_maximum() -> None:
    assert [_rotating(1, 1.0).wait_after(n) for n in (1, 2, 5)] == [1.0, 1.0, 1.0]
    assert [_rotating(1, 1.0, most=3).wait_after(n) for n in (1, 2, 3)] == [1.0, 2.0, 3.0]


async def test_each_lost_connection_or_failed_attempt_moves_to_the_next_node() -> None:
    connection = _rotating(3, 0.5)
    ports = []
    for _ in range(4):
        closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        closing.set_exception(ConnectionRefusedError())
        await connection._on_connection_close(closing)
        ports.append(connection.url.port)
    assert ports == [5682, 5683, 5681, 5682]
    assert connection.reconnect_interval == 0.0  # 4 failures: the second round goes on at once


@pytest.fixture
def refusing_ports() -> Iterator[list[int]]:
    """Two loopback ports bound but not listening: connecting is refused at once."""
    sockets = [socket.socket() for _ in range(2)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    yield [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()


async def test_connect_fails_only_when_every_node_refused_and_names_each(
    refusing_ports: list[int],
) -> None:
    urls = [f"amqp://app:s3cret@127.0.0.1:{port}/" for port in refusing_ports]
    queue = RabbitMQTaskQueue(urls, connect_timeout=2)
    with pytest.raises(BackendConnectionError) as caught:
        await queue.connect()
    message = str(caught.value)
    assert "at any of the nodes" in message
    assert all(f"app:***@127.0.0.1:{port}/" in message for port in refusing_ports)
    assert "s3cret" not in message
    assert isinstance(caught.value.__context__, UnreachableError)


def test_quorum_replicas_sets_the_initial_group_size_of_every_queue() -> None:
    work = topology.work_queue_arguments(
        "quorum",
        queue="q",
        max_priority=0,
        message_ttl=None,
        delivery_limit=None,
        extra={},
        quorum_replicas=3,
    )
    ladder = topology.ladder_queue_arguments(
        "quorum",
        prefix="q.delay",
        level=2,
        destination=topology.Destination("", "q"),
        quorum_replicas=3,
    )
    dead = topology.dead_letter_queue_arguments("quorum", 3)
    for arguments in (work, ladder, dead):
        assert arguments["x-quorum-initial-group-size"] == 3
    unset = topology.dead_letter_queue_arguments("quorum")
    assert "x-quorum-initial-group-size" not in unset


@pytest.mark.parametrize(("queue_type", "replicas"), [("classic", 3), ("quorum", 0)])
def test_quorum_replicas_needs_a_quorum_queue_and_a_positive_count(
    queue_type: str, replicas: int
) -> None:
    with pytest.raises(ValueError, match="quorum_replicas must be >= 1 and needs"):
        RabbitMQTaskQueue("amqp://h/", queue_type=queue_type, quorum_replicas=replicas)  # type: ignore[arg-type]
