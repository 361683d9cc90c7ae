"""Capability.WORKERS: worker processes register, refresh, deregister and expire."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import pytest

from lexigram.tasks.control import WorkerInfo
from lexigram.tasks.protocol import Capability, TaskQueueProtocol
from lexigram.tasks.testing._base import ContractBase, requires
from lexigram.tasks.testing._control import control
from lexigram.tasks.testing._helpers import eventually


def worker_info(queue: TaskQueueProtocol, **fields: object) -> WorkerInfo:
    """A worker entry with a unique id; ``fields`` override the defaults."""
    now = time.time()
    info = WorkerInfo(
        id=f"contract-worker-{uuid.uuid4().hex[:12]}",
        host="contract-host",
        pid=4242,
        version="0.0.0-contract",
        backends=[queue.system],
        concurrency=8,
        started_at=now,
        heartbeat_at=now,
        running=["job-a", "job-b"],
        done=3,
        failed=1,
    )
    return replace(info, **fields)  # type: ignore[arg-type]


async def listed(queue: TaskQueueProtocol) -> dict[str, WorkerInfo]:
    """The live workers by id (other tests' workers may share the server: look up by id)."""
    return {info.id: info for info in await control(queue).list_workers()}


class WorkersContract(ContractBase):
    """``register_worker``, ``deregister_worker`` and ``list_workers`` (Capability.WORKERS)."""

    @pytest.mark.asyncio
    @requires(Capability.WORKERS)
    async def test_registered_workers_are_listed_as_registered(
        self, queue: TaskQueueProtocol, queue_name: str
    ) -> None:
        first, second = worker_info(queue), worker_info(queue, running=[], pid=4343)
        await control(queue).register_worker(first, ttl=60)
        await control(queue).register_worker(second, ttl=60)
        async with self.connected(queue_name) as other:  # the CLI, in another process
            found = await listed(other)
        assert found[first.id].to_dict() == first.to_dict()
        assert found[second.id].to_dict() == second.to_dict()

    @pytest.mark.asyncio
    @requires(Capability.WORKERS)
    async def test_a_refresh_replaces_the_entry(self, queue: TaskQueueProtocol) -> None:
        info = worker_info(queue)
        await control(queue).register_worker(info, ttl=60)
        later = replace(info, heartbeat_at=info.heartbeat_at + 5, running=["job-c"], done=9)
        await control(queue).register_worker(later, ttl=60)
        found = await listed(queue)
        assert found[info.id].to_dict() == later.to_dict()
        assert [w for w in await control(queue).list_workers() if w.id == info.id] == [
            found[info.id]
        ]

    @pytest.mark.asyncio
    @requires(Capability.WORKERS)
    async def test_deregistered_worker_is_gone(self, queue: TaskQueueProtocol) -> None:
        leaving, staying = worker_info(queue), worker_info(queue)
        await control(queue).register_worker(leaving, ttl=60)
        await control(queue).register_worker(staying, ttl=60)
        await control(queue).deregister_worker(leaving.id)
        found = await listed(queue)
        assert leaving.id not in found
        assert staying.id in found
        await control(queue).deregister_worker(leaving.id)  # again: nothing to do

    @pytest.mark.asyncio
    @requires(Capability.WORKERS)
    async def test_a_worker_that_stops_refreshing_expires(self, queue: TaskQueueProtocol) -> None:
        killed, alive = worker_info(queue), worker_info(queue)
        await control(queue).register_worker(killed, ttl=self.lease_seconds)
        await control(queue).register_worker(alive, ttl=60)
        assert killed.id in await listed(queue)

        async def expired() -> bool:
            return killed.id not in await listed(queue)

        await eventually(expired, self.lease_seconds + 15, message="the entry never expired")
        assert alive.id in await listed(queue)
        await control(queue).deregister_worker(alive.id)
