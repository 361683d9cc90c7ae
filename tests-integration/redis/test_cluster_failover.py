"""A master of a Redis Cluster is killed (SIGKILL) during a 3,000-job run on a queue of four
shards; its replica takes over and the producer and the workers carry on by themselves.

Each run has a cluster of its own (three masters, three replicas, loopback ports
7206-7211, ``cluster-node-timeout`` 2000 ms). A producer enqueues job ``n`` for
``n`` in 0..2999 at 1,000 a second, retrying an enqueue that fails with the same
job (a retry never doubles it), while a worker pool runs them; every run is
counted per job in this process. After job 1,000 is confirmed the master of
shard 0's slot is killed. The run ends when every confirmed job has run or
nothing is left to run; the test prints how long the producer and the workers
took to recover, how many confirmed jobs were lost and how many ran twice.

Replication is asynchronous, as with Sentinel: a job the master confirmed but
had not yet sent to its replica is lost with it. With ``wait_replicas=1`` an
enqueue returns only once the replica has the job, so none may be lost; since
each master here has one replica, the promoted one has none until the killed
node is started again (it rejoins as its replica), which the run does once
the replica has taken over, as an operator would.
"""

from __future__ import annotations

import gc
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lexigram.tasks import TaskProvider
from lexigram.tasks.job import Job
from lexigram.tasks.redis import CacheBackendResultStore, RedisTaskQueue
from lexigram.tasks.redis._shards import ShardedRedisTaskQueue
from lexigram.tasks.testing import eventually

sys.path.insert(0, str(Path(__file__).parent))

from _cluster_nodes import ClusterNodes
from _failover_run import (
    DROPPED_CONNECTIONS,
    JOBS,
    KILL_AFTER,
    Run,
    drained,
    enqueue_until_confirmed,
    keep_pace,
)

pytestmark = DROPPED_CONNECTIONS

SHARDS = 4


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterNodes]:
    nodes = ClusterNodes(tmp_path, 7206)
    try:
        yield nodes.start()
    finally:
        nodes.stop()
        # Collect the dropped connections now, under this module's filter: left
        # to chance, the collector reports them inside whatever test runs next.
        gc.collect()


@dataclass
class ClusterRun(Run):
    """A run, with the shard of each job and the shards whose master was killed."""

    killed_port: int = 0
    shard: dict[int, int] = field(default_factory=dict)
    ids: dict[int, str] = field(default_factory=dict)
    hit: set[int] = field(default_factory=set)

    def report(self, wait_replicas: int) -> tuple[set[int], float, float]:
        # Recovery is measured on the shards whose master died (the others
        # carry on throughout): the first job of theirs confirmed, and run,
        # after the kill.
        after = [
            n
            for n, at in self.confirmed_at.items()
            if at > self.killed_at and self.shard[n] in self.hit
        ]
        producer, workers = self.recovery(after)
        lost = self.lost()
        print(
            f"\nCluster failover, {SHARDS} shards, wait_replicas={wait_replicas}: {JOBS:,} jobs, "
            f"a master killed after {KILL_AFTER:,} confirmed (shards {sorted(self.hit)} on it); "
            "on those shards, producer enqueueing again after "
            f"{producer:.2f}s ({self.failed_enqueues} failed attempts retried), workers running "
            f"new jobs after {workers:.2f}s; confirmed jobs lost: {len(lost)} "
            f"{sorted(lost)[:20]}; jobs run twice: {self.run_twice()}"
        )
        return lost, producer, workers


async def _produce(
    producer: ShardedRedisTaskQueue,
    task: str,
    run: ClusterRun,
    nodes: ClusterNodes,
    restart: bool,
) -> None:
    def restart_once_promoted() -> None:
        nonlocal restart
        if restart and _promoted(nodes, producer, run):
            nodes.restart(run.killed_port)
            restart = False

    started = time.monotonic()
    for n in range(JOBS):
        job = Job(task=task, args=[n], queue=producer.queue_name)
        run.shard[n] = producer.shard_of(job.id)
        run.ids[n] = job.id
        await enqueue_until_confirmed(producer, job, run, restart_once_promoted)
        run.confirmed_at[n] = time.monotonic()
        if n == KILL_AFTER - 1:
            run.killed_port = nodes.master_of(producer.lanes[0].keys.ready)
            run.hit = {
                index
                for index, lane in enumerate(producer.lanes)
                if nodes.master_of(lane.keys.ready) == run.killed_port
            }
            nodes.kill(run.killed_port)
            run.killed_at = time.monotonic()
        await keep_pace(started, n)


def _promoted(nodes: ClusterNodes, producer: ShardedRedisTaskQueue, run: ClusterRun) -> bool:
    """Whether another node serves the killed master's slots yet. Only then may it
    start again: a master without persistence that comes back before its replica
    took over comes back empty and keeps its slots (every job on them is lost)."""
    try:
        return nodes.master_of(producer.lanes[0].keys.ready) != run.killed_port
    except Exception:
        return False


@pytest.mark.parametrize("wait_replicas", [0, 1])
async def test_producer_and_workers_carry_on_when_a_master_is_killed(
    cluster: ClusterNodes, wait_replicas: int
) -> None:
    name = f"lxclusterfail-{uuid.uuid4().hex[:8]}"
    url = cluster.url
    run = ClusterRun()
    provider = TaskProvider(
        queue=RedisTaskQueue(url, queue_name=name, shards=SHARDS),
        result_store=CacheBackendResultStore(url, ttl=60),
        worker_count=16,
        lease_seconds=2.0,
        poll_interval=0.2,
        shutdown_timeout=5.0,
    )

    @provider.task(name="cluster_failover.record")
    async def record(n: int) -> int:
        run.record_run(n)
        return n

    producer = RedisTaskQueue(url, queue_name=name, shards=SHARDS, wait_replicas=wait_replicas)
    assert isinstance(producer, ShardedRedisTaskQueue)
    async with provider, producer:
        await _produce(producer, record.name, run, cluster, restart=bool(wait_replicas))
        await eventually(
            lambda: drained(producer, run), timeout=30, message="the run did not finish"
        )
        # After the failover a result still comes back through the result store.
        missing = sorted(set(run.confirmed_at) - set(run.ran))
        states = {n: await producer.get_job(run.ids[n]) for n in missing[:5]}
        handle = await record.enqueue(-1)
        assert await handle.result(timeout=10) == -1
        assert (await producer.counts()).failed == 0
        await producer.purge()

    lost, producer_back, workers_back = run.report(wait_replicas)
    assert len(run.confirmed_at) == JOBS
    # The cluster calls a master failed after cluster-node-timeout (2 s), then
    # its replica waits about a second before it takes over.
    assert producer_back < 10 and workers_back < 10
    if wait_replicas:
        assert not lost, f"jobs confirmed by a replica were lost: {sorted(lost)} {states}"
    else:
        run.lost_only_in_the_last_moments()
