"""RabbitMQ's ``state_store`` option from YAML, and the queue without one (no job control,
a clear error naming the option)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lexigram.tasks import TaskProvider
from lexigram.tasks.config import load_config
from lexigram.tasks.control import CancelOutcome, JobState
from lexigram.tasks.errors import CapabilityNotSupportedError, ConfigurationError
from lexigram.tasks.job import Job
from lexigram.tasks.postgres.state_store import PostgresJobStateStore
from lexigram.tasks.protocol import Capability
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.redis.state_store import RedisJobStateStore

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_yaml_builds_the_paired_store(
    kind: str, amqp_url: str, store_specs: Any, queue_name: str, tmp_path: Path
) -> None:
    spec = store_specs(kind)
    options = "\n".join(f"      {key}: {value}" for key, value in spec.items())
    path = tmp_path / "tasks.yaml"
    path.write_text(
        "tasks:\n  backend:\n    type: rabbitmq\n"
        f"    amqp_url: {amqp_url}\n    queue_name: {queue_name}\n"
        f"    state_store:\n{options}\n"
    )
    provider = load_config(path).create_provider()
    queue = provider.queue
    assert isinstance(queue, RabbitMQTaskQueue)
    assert {Capability.INSPECT, Capability.CANCEL, Capability.WORKERS} <= queue.capabilities
    expected = RedisJobStateStore if kind == "redis" else PostgresJobStateStore
    assert isinstance(queue._state, expected)
    await provider.connect()
    try:
        job = Job(task="t.config", queue=queue_name)
        await queue.enqueue(job)
        info = await provider.get_job(job.id)
        assert info is not None and info.state is JobState.QUEUED
        assert await provider.cancel(job.id) is CancelOutcome.CANCELLED
        assert await queue.dequeue(max_jobs=2, wait=0.3) == []
    finally:
        await queue.delete_topology()
        await provider.disconnect()


async def test_an_unknown_store_type_is_a_configuration_error(
    amqp_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "tasks.yaml"
    path.write_text(
        "tasks:\n  backend:\n    type: rabbitmq\n"
        f"    amqp_url: {amqp_url}\n    state_store: {{type: nosuch}}\n"
    )
    with pytest.raises(ConfigurationError, match="state store type 'nosuch'"):
        load_config(path).create_provider()


async def test_without_a_store_job_control_names_the_option(queue: RabbitMQTaskQueue) -> None:
    assert queue.capabilities == frozenset({Capability.DELAY})
    for call in (queue.get_job("x"), queue.cancel("x"), queue.list_workers()):
        with pytest.raises(CapabilityNotSupportedError, match="state_store"):
            await call
    provider = TaskProvider(queue=queue, strict=False)
    with pytest.raises(CapabilityNotSupportedError):
        await provider.get_job("x")
