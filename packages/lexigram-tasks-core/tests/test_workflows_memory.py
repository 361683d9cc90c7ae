"""The workflow contract on the memory backend."""

from __future__ import annotations

from lexigram.tasks import MemoryTaskQueue
from lexigram.tasks.protocol import TaskQueueProtocol
from lexigram.tasks.workflows.testing import WorkflowContract


class TestMemoryWorkflows(WorkflowContract):
    shared_between_processes = False

    async def create_queue(self, queue_name: str) -> TaskQueueProtocol:
        return MemoryTaskQueue(queue_name=queue_name)
