"""A RabbitMQ queue without a job state store has nowhere to keep a workflow: enqueue says so."""

from __future__ import annotations

import pytest

from lexigram.tasks import ConfigurationError, TaskProvider, chain
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue


async def test_a_workflow_on_rabbitmq_without_a_store_is_refused(
    queue: RabbitMQTaskQueue,
) -> None:
    provider = TaskProvider(queue=queue)

    @provider.task(name="wf.add")
    async def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(ConfigurationError, match="state_store=") as refused:
        await chain(add.s(1, 2), add.s(3)).enqueue()
    assert "use_workflow_store" in str(refused.value)
    assert (await queue.counts()).ready == 0
