"""MemoryTaskQueue and MemoryResultStore pass the contract suites."""

from __future__ import annotations

from lexigram.tasks.memory import MemoryTaskQueue
from lexigram.tasks.protocol import Capability, TaskQueueProtocol
from lexigram.tasks.results import MemoryResultStore, ResultStore
from lexigram.tasks.testing import ResultStoreContract, TaskQueueContract, WorkerContract


class TestMemoryContract(TaskQueueContract):
    shared_between_processes = False  # the queue lives in this process
    expected_capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.PRIORITY,
            Capability.UNIQUE,
            Capability.INSPECT,
            Capability.CANCEL,
            Capability.WORKERS,
            Capability.ATTEMPTS,
        }
    )
    lease_seconds = 0.5

    async def create_queue(self, queue_name: str) -> TaskQueueProtocol:
        # A memory queue is its own "server": instances for one name share one object,
        # as clients of one Redis would share its keys.
        queues: dict[str, MemoryTaskQueue] = self.__dict__.setdefault("_queues", {})
        return queues.setdefault(queue_name, MemoryTaskQueue(queue_name=queue_name))

    async def push_raw(self, queue: TaskQueueProtocol, payload: bytes) -> None:
        assert isinstance(queue, MemoryTaskQueue)
        queue.push_raw(payload)


class TestMemoryWorkerContract(WorkerContract):
    shared_between_processes = False  # the queue lives in this process: no process tests

    create_queue = TestMemoryContract.create_queue
    push_raw = TestMemoryContract.push_raw


class TestMemoryResultStoreContract(ResultStoreContract):
    short_ttl = 0.3

    async def create_store(self) -> ResultStore:
        # One store per test: its "clients" share it, as clients of one server would.
        store: MemoryResultStore = self.__dict__.setdefault("_store", MemoryResultStore())
        return store
