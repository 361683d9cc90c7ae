"""Bad URLs, bad credentials, clashing declarations and dropped connections."""

from __future__ import annotations

import socket
import traceback
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from lexigram.tasks.errors import BackendConnectionError, ConfigurationError
from lexigram.tasks.job import Job
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue

SECRET = "s3cret-Pa55word"


def _with_credentials(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port or 5672}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _everything_said(exc: BaseException) -> str:
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


async def test_unreachable_broker_fails_at_connect_with_the_password_redacted() -> None:
    url = f"amqp://app:{SECRET}@127.0.0.1:{_free_port()}/"
    queue = RabbitMQTaskQueue(amqp_url=url, queue_name="never", connect_timeout=3)
    with pytest.raises(BackendConnectionError) as caught:
        await queue.connect()
    message = str(caught.value)
    assert f"amqp://app:***@127.0.0.1:{urlsplit(url).port}/" in message
    assert SECRET not in _everything_said(caught.value)
    assert SECRET not in repr(queue)


async def test_wrong_credentials_fail_at_connect_and_say_so(amqp_url: str) -> None:
    url = _with_credentials(amqp_url, "guest", SECRET)
    queue = RabbitMQTaskQueue(amqp_url=url, queue_name="never", connect_timeout=5)
    with pytest.raises(BackendConnectionError, match="check the user name and password") as caught:
        await queue.connect()
    assert "guest:***@" in str(caught.value)
    assert SECRET not in _everything_said(caught.value)


async def test_a_queue_declared_with_other_settings_is_a_configuration_error(
    queue: RabbitMQTaskQueue,
) -> None:
    clash = RabbitMQTaskQueue(
        amqp_url=queue.amqp_url, queue_name=queue.queue_name, queue_type="quorum"
    )
    with pytest.raises(ConfigurationError, match=queue.queue_name) as caught:
        await clash.connect()
    assert "queue_type" in str(caught.value)


async def test_enqueue_and_dequeue_carry_on_after_the_broker_closes_the_connection(
    amqp_url: str, queue_name: str, broker: Any
) -> None:
    name = f"lxrmq-{uuid.uuid4().hex[:10]}"
    queue = RabbitMQTaskQueue(
        amqp_url=amqp_url, queue_name=queue_name, connection_name=name, reconnect_interval=0.2
    )
    async with queue:
        try:
            first = Job(task="audit.log", queue=queue_name)
            await queue.enqueue(first)
            [held] = await queue.dequeue(wait=2.0, lease_seconds=30)

            assert await broker.close_connections(name)
            second = Job(task="audit.log", queue=queue_name)
            await queue.enqueue(second)  # waits for the reconnect

            # The broker requeued the held job with the connection; it comes back
            # to this process, which still runs it, so it is not handed out twice.
            [fresh] = await queue.dequeue(max_jobs=2, wait=5.0)
            assert fresh.job_id == second.id
            assert await queue.dequeue(max_jobs=2, wait=0.5) == []
            assert (await queue.counts()).running == 2
            await queue.ack_many([held, fresh])
            assert (await queue.counts()).pending == 0
        finally:
            await queue.delete_topology()
