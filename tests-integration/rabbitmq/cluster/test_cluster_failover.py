"""A RabbitMQ cluster loses the node holding the queue's leader during a run.

3,000 jobs go through a quorum queue replicated on the three nodes of
:mod:`_local_cluster`, sent by eight concurrent producers with publisher
confirms. Producer and workers list the nodes with the leader's first, so
both are connected to it when it goes away after the first thousand
confirmed enqueues: stopped (``rabbitmqctl stop_app``, which hands the
leadership over first), or killed with SIGKILL (the others elect a leader). Every job whose
enqueue was confirmed must run, and the workers must reconnect to another
node by themselves. The time to recover is each connection's outage, as
its "restored after" log line reports it, and the longest enqueue.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from _local_cluster import LocalCluster, Node

from lexigram.tasks import TaskProvider
from lexigram.tasks.errors import BackendConnectionError
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.testing import eventually

# The first test also waits for the cluster to start (20 to 55 s on two busy cores).
pytestmark = pytest.mark.timeout(300)

JOBS = 3_000
STOP_AFTER = 1_000
PRODUCERS = 8
RESTORED = re.compile(r"RabbitMQ connection '([^']+)' to .* restored after ([\d.]+)s")


def _queue(urls: list[str], name: str, label: str, replicas: int = 3) -> RabbitMQTaskQueue:
    return RabbitMQTaskQueue(
        urls,
        name,
        queue_type="quorum",
        quorum_replicas=replicas,
        reconnect_interval=0.2,
        connect_timeout=5,
        connection_name=label,
    )


async def test_jobs_per_second_with_three_replicas_and_with_one(cluster: LocalCluster) -> None:
    """The same run without a failure: 3,000 jobs, 8 producers, 16 workers, one process."""
    print("\n" + "; ".join([await _rate(cluster, 3), await _rate(cluster, 1)]))


async def _rate(cluster: LocalCluster, replicas: int) -> str:
    name = f"lxcluster-{uuid.uuid4().hex[:8]}"
    ran: set[int] = set()
    workers = TaskProvider(queue=_queue(cluster.urls, name, "w", replicas), worker_count=16)
    producer = TaskProvider(queue=_queue(cluster.urls, name, "p", replicas))

    @workers.task(name="cluster.job")
    async def job(n: int) -> None:
        ran.add(n)

    producer.task(name="cluster.job")(job.fn)
    await producer.connect()
    numbers = iter(range(JOBS))

    async def produce() -> None:
        for n in numbers:
            await producer.enqueue("cluster.job", n)

    await workers.start()
    try:
        began = time.monotonic()
        await asyncio.gather(*(produce() for _ in range(PRODUCERS)))
        enqueued = time.monotonic() - began
        await eventually(lambda: len(ran) == JOBS, timeout=60, interval=0.05)
        done = time.monotonic() - began
    finally:
        await workers.stop()
        await producer.disconnect()
    return (
        f"{replicas} replica(s): {JOBS / enqueued:,.0f} confirmed enqueues/s, "
        f"{JOBS / done:,.0f} jobs/s enqueued and run"
    )


async def test_confirmed_jobs_survive_the_leader_node_stopping(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    await _run_through_failover(cluster, caplog, "stopped", cluster.stop_app)
    await cluster.start_app(cluster.nodes[0])


async def test_confirmed_jobs_survive_the_leader_node_being_killed(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    await _run_through_failover(cluster, caplog, "killed", cluster.kill)


async def _run_through_failover(
    cluster: LocalCluster,
    caplog: pytest.LogCaptureFixture,
    how: str,
    take_down: Callable[[Node], Awaitable[None]],
) -> None:
    caplog.set_level(logging.WARNING, logger="lexigram.tasks.rabbitmq")
    name = f"lxcluster-{uuid.uuid4().hex[:8]}"
    ran: Counter[int] = Counter()
    workers = TaskProvider(queue=_queue(cluster.urls, name, "workers"), worker_count=16)
    producer = TaskProvider(queue=_queue(cluster.urls, name, "producer"))

    @workers.task(name="cluster.job")
    async def job(n: int) -> None:
        ran[n] += 1

    producer.task(name="cluster.job")(job.fn)
    await producer.connect()
    leader = await cluster.leader_of(name)
    assert leader is cluster.nodes[0], f"declared through node 1, the leader is {leader.name}"
    members = await cluster.ctl(leader, "list_queues", "name", "members")
    assert all(node.name in members for node in cluster.nodes), members  # quorum_replicas=3

    confirmed: set[int] = set()
    resent = 0
    slowest = 0.0
    numbers = iter(range(JOBS))
    stopping: asyncio.Task[None] | None = None

    async def produce() -> None:
        nonlocal resent, slowest, stopping
        for n in numbers:
            if n == STOP_AFTER:
                stopping = asyncio.ensure_future(take_down(leader))
            began = time.monotonic()
            while True:
                try:
                    await producer.enqueue("cluster.job", n)
                except BackendConnectionError:
                    resent += 1  # not confirmed: sent again
                    continue
                break
            slowest = max(slowest, time.monotonic() - began)
            confirmed.add(n)

    await workers.start()
    try:
        await asyncio.gather(*(produce() for _ in range(PRODUCERS)))
        assert stopping is not None
        await stopping
        await eventually(lambda: confirmed <= ran.keys(), timeout=60, interval=0.2)
        worker_queue = workers.backends["default"]
        assert isinstance(worker_queue, RabbitMQTaskQueue)
        now_on = worker_queue.node
        assert now_on is not None and f":{leader.amqp_port}/" not in now_on, now_on
    finally:
        await workers.stop()
        await producer.disconnect()

    outages = dict(RESTORED.findall(caplog.text))
    lost = confirmed - ran.keys()
    twice = sum(1 for count in ran.values() if count > 1)
    print(
        f"\n{JOBS} jobs, {leader.name} (the queue's leader) {how} after {STOP_AFTER}: "
        f"confirmed jobs lost {len(lost)}, run twice {twice}, enqueues resent {resent}; "
        f"outage of the workers' connection {outages.get('workers', '?')}s, of the "
        f"producer's {outages.get('producer', '?')}s; slowest enqueue {slowest:.2f}s"
    )
    assert not lost
    assert set(outages) == {"workers", "producer"}, caplog.text
