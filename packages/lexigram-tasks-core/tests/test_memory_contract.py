"""MemoryTaskQueue passes the backend contract suite."""

from __future__ import annotations

from lexigram.tasks.memory import MemoryTaskQueue
from lexigram.tasks.protocol import Capability, TaskQueueProtocol
from lexigram.tasks.testing import TaskQueueContract


class TestMemoryContract(TaskQueueContract):
    expected_capabilities = frozenset({Capability.DELAY, Capability.PRIORITY, Capability.UNIQUE})
    lease_seconds = 0.5

    async def create_queue(self, queue_name: str) -> TaskQueueProtocol:
        # A memory queue is its own "server": instances for one name share one object,
        # as clients of one Redis would share its keys.
        queues: dict[str, MemoryTaskQueue] = self.__dict__.setdefault("_queues", {})
        return queues.setdefault(queue_name, MemoryTaskQueue(queue_name=queue_name))

    async def push_raw(self, queue: TaskQueueProtocol, payload: bytes) -> None:
        assert isinstance(queue, MemoryTaskQueue)
        queue.push_raw(payload)
