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

import gc
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lexigram.tasks import TaskProvider
from lexigram.tasks.job import Job
from lexigram.tasks.redis import CacheBackendResultStore, RedisTaskQueue
from lexigram.tasks.redis.keys import cancel_channel
from lexigram.tasks.testing import eventually

sys.path.insert(0, str(Path(__file__).parent))

from _failover_run import (
    DROPPED_CONNECTIONS,
    JOBS,
    KILL_AFTER,
    Run,
    drained,
    enqueue_until_confirmed,
    keep_pace,
)
from _sentinel_nodes import SentinelNodes

pytestmark = DROPPED_CONNECTIONS


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


def _report(run: Run, wait_replicas: int) -> tuple[set[int], float, float]:
    after = [n for n, at in run.confirmed_at.items() if at > run.killed_at]
    producer, workers = run.recovery(after)
    lost = run.lost()
    print(
        f"\nSentinel failover, wait_replicas={wait_replicas}: {JOBS:,} jobs, master killed "
        f"after {KILL_AFTER:,} confirmed; producer enqueueing again after {producer:.2f}s "
        f"({run.failed_enqueues} failed attempts retried), workers running new jobs "
        f"after {workers:.2f}s; confirmed jobs lost: {len(lost)} {sorted(lost)[:20]}; "
        f"jobs run twice: {run.run_twice()}"
    )
    return lost, producer, workers


async def _produce(producer: RedisTaskQueue, task: str, run: Run, nodes: SentinelNodes) -> None:
    started = time.monotonic()
    for n in range(JOBS):
        await enqueue_until_confirmed(
            producer, Job(task=task, args=[n], queue=producer.queue_name), run
        )
        run.confirmed_at[n] = time.monotonic()
        if n == KILL_AFTER - 1:
            nodes.kill(nodes.master_port())
            run.killed_at = time.monotonic()
        await keep_pace(started, n)


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
        run.record_run(n)
        return n

    producer = RedisTaskQueue(url, queue_name=name, wait_replicas=wait_replicas)
    async with provider, producer:
        await _produce(producer, record.name, run, sentinel_nodes)
        await eventually(
            lambda: drained(producer, run), timeout=30, message="the run did not finish"
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

    lost, producer_back, workers_back = _report(run, wait_replicas)
    assert len(run.confirmed_at) == JOBS
    # Sentinel needs about 2 s here (1 s to call the master down, then the
    # promotion); far more would mean a client waiting on something else.
    assert producer_back < 8 and workers_back < 8
    if wait_replicas:
        assert not lost, f"jobs confirmed by a replica were lost: {sorted(lost)}"
    else:
        run.lost_only_in_the_last_moments()
