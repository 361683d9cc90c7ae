"""The fixtures and hooks every contract mixin shares."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
import pytest_asyncio

from lexigram.tasks.protocol import Capability, TaskQueueProtocol
from lexigram.tasks.testing._processes import BackendSpec, WorkerProcesses

F = TypeVar("F", bound=Callable[..., Any])

_REQUIRES_ATTR = "__lexigram_requires__"


def requires(*capabilities: Capability) -> Callable[[F], F]:
    """Run the decorated test only on a backend declaring every one of ``capabilities``.

    On other backends the ``queue`` fixture skips the test with a reason that
    names the missing capability (shown by ``pytest -rs``).
    """

    def mark(test: F) -> F:
        setattr(test, _REQUIRES_ATTR, frozenset(capabilities))
        return test

    return mark


def required_capabilities(test: object) -> frozenset[Capability]:
    """The capabilities a test was decorated with by :func:`requires`."""
    found: frozenset[Capability] = getattr(test, _REQUIRES_ATTR, frozenset())
    return found


class ContractBase:
    """Fixtures and hooks of the contract suite; subclass :class:`TaskQueueContract`."""

    #: The exact capability set the backend must declare, or ``None`` to skip the guard test.
    expected_capabilities: ClassVar[frozenset[Capability] | None] = None
    #: Lease given to jobs in lease-lapse tests, and the delay of delay tests (seconds).
    lease_seconds: ClassVar[float] = 1.0
    #: How much earlier than due a delayed job may arrive (clock resolution, server skew).
    clock_tolerance: ClassVar[float] = 0.1
    #: ``False`` for a backend whose jobs live inside one process (the memory
    #: backend): the tests that run several processes are skipped, saying so.
    shared_between_processes: ClassVar[bool] = True
    #: ``False`` for a backend that forgets a job once it finishes (Capability.INSPECT):
    #: a finished job's id then gives None, and cancelling it ``not_found``.
    keeps_finished_jobs: ClassVar[bool] = True
    #: ``False`` for a backend whose ``counts().running`` covers only the jobs
    #: this connection holds (RabbitMQ: AMQP 0-9-1 does not report another
    #: connection's unacked messages); the tests then read it from the holder.
    counts_leases_of_other_connections: ClassVar[bool] = True
    #: ``False`` for a backend that spreads one queue over independent partitions
    #: (Redis Cluster with ``shards=N``): jobs leave each partition first in, first
    #: out, but not the queue as a whole; the order tests then check which jobs came.
    keeps_order: ClassVar[bool] = True

    async def create_queue(self, queue_name: str) -> TaskQueueProtocol:
        """Return a new, NOT connected queue instance reading and writing ``queue_name``.

        Instances created for the same name must share their jobs, as separate
        clients of one server do: the suite uses several as concurrent consumers.
        """
        raise NotImplementedError(f"{type(self).__name__} must override create_queue()")

    async def push_raw(self, queue: TaskQueueProtocol, payload: bytes) -> None:
        """Put ``payload`` on ``queue`` byte for byte, as a foreign producer would.

        Used to check that a message which is not a valid job is dead-lettered.
        """
        raise NotImplementedError(f"{type(self).__name__} must override push_raw()")

    def queue_spec(self, queue_name: str) -> BackendSpec:
        """How another process builds the queue of :meth:`create_queue` for ``queue_name``.

        The multi-process tests start consumer and worker processes with it,
        because a lock or a count that holds in one process only is a bug no
        single-process test can see.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must override queue_spec() for the multi-process tests "
            "(or set shared_between_processes = False for a backend living in one process)"
        )

    async def drop_queue(self, queue_name: str) -> None:
        """Optional: delete whatever the test left on the server under ``queue_name``."""

    @pytest.fixture
    def processes(self, queue_name: str, tmp_path: Path) -> Iterator[WorkerProcesses]:
        """Starts worker or consumer processes on ``queue_name``; kills what is left after.

        Skips the test on a backend that is not ``shared_between_processes``.
        """
        if not self.shared_between_processes:
            pytest.skip(f"{type(self).__name__}: the queue lives in one process")
        started = WorkerProcesses(self.queue_spec(queue_name), tmp_path)
        try:
            yield started
        finally:
            started.close()

    @pytest_asyncio.fixture
    async def queue_name(self) -> AsyncIterator[str]:
        """A queue name no other test (or test run) uses."""
        name = f"lexigram_contract_{uuid.uuid4().hex[:12]}"
        yield name
        await self.drop_queue(name)

    @pytest_asyncio.fixture
    async def queue(
        self, request: pytest.FixtureRequest, queue_name: str
    ) -> AsyncIterator[TaskQueueProtocol]:
        """A connected queue; disconnected after the test.

        Skips the test when the backend lacks a capability it ``requires``.
        """
        async with self.connected(queue_name) as opened:
            missing = required_capabilities(request.function) - opened.capabilities
            if missing:
                names = ", ".join(sorted(c.value for c in missing))
                pytest.skip(f"{type(opened).__name__} does not declare capability {names}")
            yield opened

    @asynccontextmanager
    async def connected(self, queue_name: str) -> AsyncIterator[TaskQueueProtocol]:
        """A further connected instance of ``queue_name`` (another consumer or producer)."""
        opened = await self.create_queue(queue_name)
        await opened.connect()
        try:
            yield opened
        finally:
            await opened.disconnect()
