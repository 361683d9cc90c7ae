"""The master is killed (SIGKILL) during a 3,000-job run; Sentinel promotes the replica
and the producer and the workers carry on against it by themselves.

Each run has a master, a replica and three sentinels of its own (loopback
ports 16382-16383 and 26383-26385). A producer enqueues job ``n`` for
``n`` in 0..2999, retrying an enqueue that fails with the same job (so a
retry never doubles it), while a worker pool runs them; every run is
counted per job in this process. After job 1,000 is confirmed the master is
killed. The run ends when every confirmed job has run or nothing is left on
the new master to run; the test prints how long the producer and the
workers took to recover, how many confirmed jobs were lost and how many ran
twice.

Replication is asynchronous: a job confirmed by the master but not yet on
the replica when the master dies is lost. With ``wait_replicas=1`` an
enqueue returns only once a replica has the job, so none may be lost; that
run has two replicas, since with one the new master would have none left
and every such enqueue would fail until the killed node is back.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lexigram.tasks import BackendConnectionError, TaskProvider
from lexigram.tasks.job import Job
from lexigram.tasks.redis import CacheBackendResultStore, RedisTaskQueue
from lexigram.tasks.redis.keys import cancel_channel
from lexigram.tasks.testing import eventually

sys.path.insert(0, str(Path(__file__).parent))

from _sentinel_nodes import SentinelNodes

# When the master dies mid-command, redis-py can drop a sentinel or master
# connection it was using without closing its socket; the garbage collector
# then reports it, at a moment unrelated to any assertion here (1 run in 5).
# Only those destructor reports are let through; every other warning fails.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function (StreamWriter|AbstractConnection).__del__"
    ":pytest.PytestUnraisableExceptionWarning"
)

JOBS = 3000
KILL_AFTER = 1000
#: Jobs per second the producer aims at, so that the run spans the failover.
PACE = 1000


@pytest.fixture
def sentinel_nodes(tmp_path: Path, wait_replicas: int) -> Iterator[SentinelNodes]:
    """A master with one replica, or two with ``wait_replicas``: after the failover
    the new master still has one, so enqueues waiting for a replica go on."""
    nodes = SentinelNodes(tmp_path, 16382, 26383, replicas=1 + wait_replicas)
    try:
        yield nodes.start()
    finally:
        nodes.stop()
        # Collect the dropped connections now, under this module's filter: left
        # to chance, the collector reports them inside whatever test runs next.
        gc.collect()


@dataclass
class Run:
    """What happened, as the producer and the task saw it (monotonic times)."""

    ran: collections.Counter[int] = field(default_factory=collections.Counter)
    first_run: dict[int, float] = field(default_factory=dict)
    confirmed_at: dict[int, float] = field(default_factory=dict)
    failed_enqueues: int = 0
    killed_at: float = 0.0

    def report(self, wait_replicas: int) -> tuple[set[int], float, float]:
        after = [n for n, at in self.confirmed_at.items() if at > self.killed_at]
        producer = min(self.confirmed_at[n] for n in after) - self.killed_at
        workers = min(self.first_run[n] for n in after) - self.killed_at
        lost = set(self.confirmed_at) - set(self.ran)
        twice = sum(1 for count in self.ran.values() if count > 1)
        print(
            f"\nSentinel failover, wait_replicas={wait_replicas}: {JOBS:,} jobs, master killed "
            f"after {KILL_AFTER:,} confirmed; producer enqueueing again after {producer:.2f}s "
            f"({self.failed_enqueues} failed attempts retried), workers running new jobs "
            f"after {workers:.2f}s; confirmed jobs lost: {len(lost)} {sorted(lost)[:20]}; "
            f"jobs run twice: {twice}"
        )
        return lost, producer, workers


async def _produce(producer: RedisTaskQueue, task: str, run: Run, nodes: SentinelNodes) -> None:
    started = time.monotonic()
    for n in range(JOBS):
        job = Job(task=task, args=[n], queue=producer.queue_name)
        while True:
            try:
                await producer.enqueue(job)
                break
            except BackendConnectionError:
                run.failed_enqueues += 1
                await asyncio.sleep(0.05)
        run.confirmed_at[n] = time.monotonic()
        if n == KILL_AFTER - 1:
            nodes.kill(nodes.master_port())
            run.killed_at = time.monotonic()
        ahead = started + n / PACE - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)


async def _drained(queue: RedisTaskQueue, run: Run) -> bool:
    """Every confirmed job ran, or nothing is left on the server to run."""
    if set(run.confirmed_at) <= set(run.ran):
        return True
    try:
        counts = await queue.counts()
    except BackendConnectionError:
        return False
    return counts.ready == counts.delayed == counts.running == 0


@pytest.mark.parametrize("wait_replicas", [0, 1])
async def test_producer_and_workers_carry_on_when_the_master_is_killed(
    sentinel_nodes: SentinelNodes, wait_replicas: int
) -> None:
    name = f"lxfailover-{uuid.uuid4().hex[:10]}"
    url = sentinel_nodes.url
    run = Run()
    provider = TaskProvider(
        queue=RedisTaskQueue(url, queue_name=name),
        result_store=CacheBackendResultStore(url, ttl=60),
        worker_count=16,
        lease_seconds=2.0,
        poll_interval=0.2,
        shutdown_timeout=5.0,
    )

    @provider.task(name="failover.record")
    async def record(n: int) -> int:
        run.ran[n] += 1
        run.first_run.setdefault(n, time.monotonic())
        return n

    producer = RedisTaskQueue(url, queue_name=name, wait_replicas=wait_replicas)
    async with provider, producer:
        await _produce(producer, record.name, run, sentinel_nodes)
        await eventually(
            lambda: _drained(producer, run), timeout=30, message="the run did not finish"
        )
        # After the failover: a result comes back through the result store, and
        # the workers' cancellation channel listens on the new master.
        handle = await record.enqueue(-1)
        assert await handle.result(timeout=10) == -1
        new_master = sentinel_nodes.client(sentinel_nodes.master_port())
        try:
            channel = cancel_channel(name)
            await eventually(
                lambda: new_master.pubsub_numsub(channel)[0][1] >= 1,
                timeout=10,
                message="no worker listens for cancellations on the new master",
            )
        finally:
            new_master.close()
        assert (await producer.counts()).failed == 0
        await producer.purge()

    lost, producer_back, workers_back = run.report(wait_replicas)
    assert len(run.confirmed_at) == JOBS
    # Sentinel needs about 2 s here (1 s to call the master down, then the
    # promotion); far more would mean a client waiting on something else.
    assert producer_back < 8 and workers_back < 8
    if wait_replicas:
        assert not lost, f"jobs confirmed by a replica were lost: {sorted(lost)}"
    else:
        # Only what the replica had not received when the master died can be
        # lost: at most the jobs confirmed in the last moments before the kill.
        window = {n for n, at in run.confirmed_at.items() if at > run.killed_at - 0.5}
        assert lost <= window, f"lost jobs confirmed long before the kill: {sorted(lost)}"
