"""Every Redis component works through Redis Sentinel (``redis+sentinel://``).

One master, one replica and three sentinels of this module's own (loopback
ports 16380-16381 and 26380-26382) serve the whole module: the queue
contract suite runs against the sentinel URL, and each component that keeps
state in Redis connects through it. ``test_sentinel_failover.py`` kills a
master.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lexigram.tasks import BackendConnectionError
from lexigram.tasks.dlq.redis import RedisDeadLetterStorage
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Capability, TaskQueueProtocol
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.scheduler.redis_store import RedisTemplateStore
from lexigram.tasks.testing import BackendSpec, TaskQueueContract, eventually

sys.path.insert(0, str(Path(__file__).parent))

from _components import COMPONENTS, round_trip
from _sentinel_nodes import SERVICE, SentinelNodes


@pytest.fixture(scope="module")
def sentinel_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelNodes]:
    nodes = SentinelNodes(tmp_path_factory.mktemp("sentinel"), 16380, 26380)
    try:
        yield nodes.start()
    finally:
        nodes.stop()


class TestSentinelContract(TaskQueueContract):
    """The whole queue contract, through the sentinels."""

    expected_capabilities = RedisTaskQueue.capabilities

    @pytest.fixture(autouse=True)
    def _url(self, sentinel_nodes: SentinelNodes) -> None:
        self.url = sentinel_nodes.url

    async def create_queue(self, queue_name: str) -> TaskQueueProtocol:
        return RedisTaskQueue(redis_url=self.url, queue_name=queue_name)

    def queue_spec(self, queue_name: str) -> BackendSpec:
        options = {"redis_url": self.url, "queue_name": queue_name}
        return BackendSpec("lexigram.tasks.redis:RedisTaskQueue", options)

    async def push_raw(self, queue: TaskQueueProtocol, payload: bytes) -> None:
        assert isinstance(queue, RedisTaskQueue)
        await queue.push_raw(payload)

    async def drop_queue(self, queue_name: str) -> None:
        async with RedisTaskQueue(redis_url=self.url, queue_name=queue_name) as queue:
            await queue.purge()


def test_the_contract_declares_what_a_plain_redis_queue_does() -> None:
    assert Capability.CANCEL in TestSentinelContract.expected_capabilities


@pytest.mark.parametrize("name", COMPONENTS)
async def test_every_component_stores_its_state_on_the_master_the_sentinels_name(
    sentinel_nodes: SentinelNodes, name: str
) -> None:
    ns = f"lxsentinel-{uuid.uuid4().hex[:10]}"
    component = COMPONENTS[name](sentinel_nodes.url, ns)
    await component.connect()
    try:
        await round_trip(component, ns)
    finally:
        await component.disconnect()


@pytest.mark.parametrize(
    "make",
    [
        lambda s: RedisTaskQueue(sentinels=s, service_name=SERVICE, queue_name="kw"),
        lambda s: RedisDeadLetterStorage(sentinels=s, service_name=SERVICE, prefix="lxkw"),
        lambda s: RedisTemplateStore("redis://", sentinels=s, service_name=SERVICE),
    ],
    ids=["queue", "dead letter storage", "scheduler store"],
)
async def test_sentinels_can_be_given_as_keywords(sentinel_nodes: SentinelNodes, make: Any) -> None:
    sentinels = [("127.0.0.1", port) for port in sentinel_nodes.sentinel_ports]
    component = make(sentinels)
    assert component.redis_url == sentinel_nodes.url
    await component.connect()
    await component.disconnect()


async def test_an_unknown_service_is_a_connection_error_without_the_passwords(
    sentinel_nodes: SentinelNodes,
) -> None:
    hosts = ",".join(f"127.0.0.1:{port}" for port in sentinel_nodes.sentinel_ports)
    url = f"redis+sentinel://:hunter2@{hosts}/nosuchmaster/0?sentinel_password=swordfish"
    queue = RedisTaskQueue(url, queue_name="nowhere")
    with pytest.raises(BackendConnectionError) as caught:
        await queue.connect()
    message = str(caught.value)
    assert "No master found for 'nosuchmaster'" in message
    assert "hunter2" not in message and "swordfish" not in message
    assert ":***@127.0.0.1" in message and "sentinel_password=***" in message
    assert "hunter2" not in repr(queue) and "swordfish" not in repr(queue)


async def test_closing_a_component_closes_its_connections_to_master_and_sentinels(
    sentinel_nodes: SentinelNodes,
) -> None:
    name = f"lxsentinel-{uuid.uuid4().hex[:10]}"
    queue = RedisTaskQueue(f"{sentinel_nodes.url}?client_name={name}", queue_name=name)

    def on_master() -> int:
        master = sentinel_nodes.client(sentinel_nodes.master_port())
        try:
            return sum(1 for c in master.client_list() if c.get("name") == name)
        finally:
            master.close()

    def on_sentinels() -> int:
        """Clients of the sentinels other than the sentinels themselves (and this check)."""
        total = 0
        for port in sentinel_nodes.sentinel_ports:
            node = sentinel_nodes.client(port)
            try:
                clients = node.client_list()
                total += sum(1 for c in clients if not c["name"].startswith("sentinel-")) - 1
            finally:
                node.close()
        return total

    before = on_sentinels()
    await queue.connect()
    await queue.enqueue(Job(task="sentinel.t", queue=name))
    assert on_master() >= 1  # the master's connections carry the name
    assert on_sentinels() > before  # the master was asked for
    await queue.purge()
    await queue.disconnect()
    await eventually(lambda: on_master() == 0 and on_sentinels() == before, timeout=5)


async def test_wait_replicas_puts_each_job_on_the_replica_before_enqueue_returns(
    sentinel_nodes: SentinelNodes,
) -> None:
    """With ``wait_replicas=1`` a job is on the replica the moment enqueue
    returns; prints what that costs against plain enqueues (one producer)."""
    name = f"lxsentinel-{uuid.uuid4().hex[:10]}"
    master, replica = sentinel_nodes.master_port(), sentinel_nodes.data_ports[1]
    assert master != replica
    reader = sentinel_nodes.client(replica)
    plain = RedisTaskQueue(sentinel_nodes.url, queue_name=name)
    waiting = RedisTaskQueue(sentinel_nodes.url, queue_name=name, wait_replicas=1)
    rates = {}
    try:
        async with plain, waiting:
            for queue in (plain, waiting, plain, waiting):  # alternated, against drift
                started = time.perf_counter()
                for _ in range(300):
                    job_id = await queue.enqueue(Job(task="sentinel.t", queue=name))
                    if queue is waiting:
                        assert reader.exists(f"rq:job:{job_id}")
                rates.setdefault(queue.wait_replicas, []).append(
                    300 / (time.perf_counter() - started)
                )
            await plain.purge()
    finally:
        reader.close()
    best = {replicas: max(found) for replicas, found in rates.items()}
    print(
        f"\nsingle enqueues, one producer: {best[0]:,.0f}/s plain, "
        f"{best[1]:,.0f}/s with wait_replicas=1 ({best[1] / best[0]:.0%})"
    )


async def test_wait_replicas_beyond_the_replicas_present_fails_the_enqueue(
    sentinel_nodes: SentinelNodes,
) -> None:
    name = f"lxsentinel-{uuid.uuid4().hex[:10]}"
    queue = RedisTaskQueue(sentinel_nodes.url, queue_name=name, wait_replicas=2, wait_timeout=0.1)
    async with queue:
        with pytest.raises(BackendConnectionError, match="1 of 2 replica"):
            await queue.enqueue(Job(task="sentinel.t", queue=name))
        assert (await queue.counts()).ready == 1  # stored on the master all the same
        await queue.purge()


async def test_a_master_short_of_min_replicas_to_write_refuses_with_a_clear_error(
    sentinel_nodes: SentinelNodes,
) -> None:
    name = f"lxsentinel-{uuid.uuid4().hex[:10]}"
    master = sentinel_nodes.client(sentinel_nodes.master_port())
    master.config_set("min-replicas-to-write", 2)  # one replica is connected
    try:
        async with RedisTaskQueue(sentinel_nodes.url, queue_name=name) as queue:
            with pytest.raises(BackendConnectionError, match="min-replicas-to-write"):
                await queue.enqueue(Job(task="sentinel.t", queue=name))
            master.config_set("min-replicas-to-write", 1)
            await queue.enqueue(Job(task="sentinel.t", queue=name))
            assert (await queue.counts()).ready == 1  # the refused one left nothing
            await queue.purge()
    finally:
        master.config_set("min-replicas-to-write", 0)
        master.close()


async def test_sentinels_requiring_a_password_get_the_one_in_the_url(
    sentinel_nodes: SentinelNodes,
) -> None:
    sentinel_nodes.add_sentinel(26386, "guarded", "w4tchword")
    name = f"lxsentinel-{uuid.uuid4().hex[:10]}"
    url = "redis+sentinel://127.0.0.1:26386/guarded/0"
    async with RedisTaskQueue(f"{url}?sentinel_password=w4tchword", queue_name=name) as queue:
        await queue.enqueue(Job(task="sentinel.t", queue=name))
        assert (await queue.counts()).ready == 1
        await queue.purge()
    with pytest.raises(BackendConnectionError, match="No master found for 'guarded'") as caught:
        await RedisTaskQueue(f"{url}?sentinel_password=b4dguess", queue_name=name).connect()
    message = str(caught.value)
    assert "b4dguess" not in message and "sentinel_password=***" in message
    # each sentinel is named by its address, with its answer
    assert "sentinel 127.0.0.1:26386 - auth:AuthenticationError" in message, message
    assert "<redis" not in message
