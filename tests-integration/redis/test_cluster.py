"""RedisTaskQueue on a Redis Cluster: the queue contract suite, with one shard and with four.

The module starts its own cluster, three masters and three replicas on
loopback ports 7200-7205 (``_cluster_nodes.py``), once for all its tests,
and stops it by PID at the end (the worker contract suite runs in
``test_cluster_workers.py``, on a cluster of its own, so that the two
files can run side by side). Besides the suites, it checks what cluster
mode promises beyond them: every key of a shard hashes to one slot, four
shards reach every master, a dedup key always lands in one shard, and the
shards add up in counts, listings and lookups.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from redis.asyncio.cluster import RedisCluster
from redis.cluster import PRIMARY, REPLICA, key_slot

from lexigram.tasks import TaskProvider
from lexigram.tasks.control import CancelOutcome, JobState
from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Capability
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.redis._shards import ShardedRedisTaskQueue
from lexigram.tasks.redis.workflows import RedisWorkflowStore
from lexigram.tasks.testing import TaskQueueContract, eventually
from lexigram.tasks.workflows.store import StepOutcome

sys.path.insert(0, str(Path(__file__).parent))

from _cluster_nodes import ClusterHooks, ClusterNodes
from _components import COMPONENTS, round_trip

FIRST_PORT = 7200

#: Cluster mode with one shard declares what the queue declares on one server.
CAPABILITIES = RedisTaskQueue.capabilities


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNodes]:
    nodes = ClusterNodes(tmp_path_factory.mktemp("redis-cluster"), FIRST_PORT)
    try:
        yield nodes.start()
    finally:
        nodes.stop()


class TestClusterContract(ClusterHooks, TaskQueueContract):
    expected_capabilities = CAPABILITIES


class TestShardedContract(ClusterHooks, TaskQueueContract):
    shards = 4
    keeps_order = False
    # Order holds within a shard only, so priorities are refused (see _shards.py).
    expected_capabilities = CAPABILITIES - {Capability.PRIORITY}


# -- what cluster mode adds --------------------------------------------------


@pytest_asyncio.fixture
async def sharded(cluster: ClusterNodes) -> AsyncIterator[RedisTaskQueue]:
    name = f"lxcluster-{uuid.uuid4().hex[:8]}"
    async with RedisTaskQueue(cluster.url, name, shards=4) as queue:
        yield queue
    async with RedisTaskQueue(cluster.url, name, shards=4) as queue:
        await queue.purge()


@pytest_asyncio.fixture
async def raw(cluster: ClusterNodes) -> AsyncIterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=FIRST_PORT)
    try:
        yield client
    finally:
        await client.aclose()


def _spread_name() -> str:
    """A queue name whose four shard tags hash to slots of all three masters
    (``redis-cli --cluster create`` gives each a third of the slots, in order);
    about 44% of names do, so the first few tries find one."""
    for attempt in range(1000):
        name = f"lxcluster-spread-{attempt}"
        thirds = {key_slot(f"{{{name}:{i}}}".encode()) * 3 // 16384 for i in range(4)}
        if len(thirds) == 3:
            return name
    raise AssertionError("no name spreads over three masters")


async def test_every_key_of_a_shard_lies_in_one_slot_and_the_shards_use_every_master(
    raw: RedisCluster, cluster: ClusterNodes
) -> None:
    async with RedisTaskQueue(cluster.url, _spread_name(), shards=4) as sharded:
        assert isinstance(sharded, ShardedRedisTaskQueue)
        try:
            ids = await sharded.enqueue_many([Job(task="t", args=[i]) for i in range(40)])
            masters = set()
            for lane in sharded.lanes:
                slots = {raw.keyslot(key) for key in lane.keys.as_list()}
                slots |= {raw.keyslot(lane.keys.job(job_id)) for job_id in ids}
                assert len(slots) == 1, lane.keys
                masters.add(cluster.master_of(lane.keys.ready))
                # The shard's jobs are on the master serving its slot.
                node = cluster.client(cluster.master_of(lane.keys.ready))
                try:
                    held = node.llen(lane.keys.ready)
                finally:
                    node.close()
                assert held == (await lane.counts()).ready > 0
            assert len(masters) == 3
            assert (await sharded.counts()).ready == 40
        finally:
            await sharded.purge()


async def test_a_dedup_key_holds_across_shards(sharded: RedisTaskQueue) -> None:
    first = await sharded.enqueue(Job(task="t", dedup_key="report-7"))
    again = [await sharded.enqueue(Job(task="t", dedup_key="report-7")) for _ in range(10)]
    assert again == [first] * 10
    assert (await sharded.counts()).ready == 1


async def test_counts_listing_lookup_and_cancel_add_the_shards_up(
    sharded: RedisTaskQueue,
) -> None:
    jobs = [Job(task="t", args=[i]) for i in range(30)]
    jobs.append(Job(task="t", dedup_key="lives-in-its-key's-shard"))
    ids = await sharded.enqueue_many(jobs)
    assert (await sharded.counts()).ready == 31
    listed: list[str] = []
    cursor = None
    while True:
        page = await sharded.list_jobs(state=JobState.QUEUED, limit=7, cursor=cursor)
        listed += [info.id for info in page.jobs]
        cursor = page.cursor
        if cursor is None:
            break
    assert sorted(listed) == sorted(ids)
    for job_id in (ids[0], ids[-1]):
        info = await sharded.get_job(job_id)
        assert info is not None and info.state is JobState.QUEUED
    assert await sharded.cancel(ids[-1]) is CancelOutcome.CANCELLED
    assert (await sharded.counts()).ready == 30
    assert await sharded.cancel("no-such-job") is CancelOutcome.NOT_FOUND


async def test_a_provider_runs_jobs_spread_over_the_shards(sharded: RedisTaskQueue) -> None:
    provider = TaskProvider(queue=sharded, worker_count=4)
    seen: list[int] = []

    @provider.task(name="cluster.record")
    async def record(n: int) -> None:
        seen.append(n)

    async def settled() -> bool:
        return len(seen) == 50 and (await sharded.counts()).pending == 0

    async with provider:
        for n in range(50):
            await record.enqueue(n)
        await eventually(settled, 10, message="the jobs did not all run and settle")
    assert sorted(seen) == list(range(50))


def test_shards_need_a_cluster_and_tags_refuse_braces() -> None:
    with pytest.raises(ConfigurationError, match="needs Redis Cluster"):
        RedisTaskQueue("redis://localhost/0", "q", shards=2)
    with pytest.raises(ConfigurationError, match="may not contain"):
        RedisTaskQueue("redis+cluster://localhost:7000", "q{1}")
    with pytest.raises(ValueError, match="at least 1"):
        RedisTaskQueue("redis+cluster://localhost:7000", "q", shards=0)


@pytest.mark.parametrize("name", COMPONENTS)
async def test_every_component_works_on_the_cluster(cluster: ClusterNodes, name: str) -> None:
    """The result store, the limiters, the job state store, the dead letter queue's
    and the scheduler's storages take the same URL (the same round trips as on
    Sentinel); those whose scripts touch several keys get a hash-tagged prefix."""
    ns = f"lxcluster-{uuid.uuid4().hex[:10]}"
    component = COMPONENTS[name](cluster.url, ns)
    await component.connect()
    try:
        await round_trip(component, ns)
    finally:
        await component.disconnect()


async def test_the_workflow_store_counts_a_fan_in_on_the_cluster(cluster: ClusterNodes) -> None:
    store = RedisWorkflowStore(cluster.url, namespace=f"lxcluster-{uuid.uuid4().hex[:8]}")
    assert store.namespace.startswith("{") and store.namespace.endswith("}")
    await store.connect()
    try:
        # Step 2 waits for steps 0 and 1; both finish in one call, on two workflows.
        for workflow in ("wf-a", "wf-b"):
            await store.create(workflow, "{}", pending=[0, 0, 2], steps=3, ttl=60)
        outcomes = [
            StepOutcome(workflow, step, f"{step}", dependents=(2,))
            for workflow in ("wf-a", "wf-b")
            for step in (0, 1)
        ]
        claims = await store.complete(outcomes)
        assert sorted((claim.workflow_id, claim.step) for claim in claims) == [
            ("wf-a", 2),
            ("wf-b", 2),
        ]
        await store.forget("wf-a")
        await store.forget("wf-b")
    finally:
        await store.disconnect()


@pytest.mark.parametrize("wait_replicas", [0, 1])
async def test_a_master_that_lost_its_scripts_gets_them_even_when_listed_as_a_replica(
    cluster: ClusterNodes, wait_replicas: int
) -> None:
    """A replica promoted by a failover starts with an empty script cache, and the
    cluster client can go on listing it as a replica after it learned that the
    node serves the slot: the queue loads a refused script on that very node,
    not on the nodes the client lists as primaries (a failover test once saw the
    retried enqueue refused again)."""
    name = f"lxcluster-noscript-{uuid.uuid4().hex[:8]}"
    async with RedisTaskQueue(cluster.url, name, wait_replicas=wait_replicas) as queue:
        await queue.enqueue(Job(task="t"))  # every script is loaded
        client = queue.client
        assert isinstance(client, RedisCluster)
        node = client.get_node_from_key(queue.keys.ready)
        assert node is not None
        await client.execute_command("SCRIPT FLUSH", target_nodes=node)
        node.server_type = REPLICA  # the client's stale view of it
        try:
            stored = await queue.enqueue(Job(task="t"))
            leased = await queue.dequeue(max_jobs=5, lease_seconds=30)
        finally:
            node.server_type = PRIMARY
        assert stored in [d.job.id for d in leased if d.job is not None]
        assert len(leased) == 2
        await queue.purge()


async def test_an_enqueue_that_waits_for_replicas_follows_a_moved_slot_to_a_master_without_scripts(
    cluster: ClusterNodes,
) -> None:
    """What a failover looks like to a producer that has not heard of it yet: the
    node it knew answers MOVED, and the promoted replica it is sent to has an
    empty script cache. The enqueue gets through (one relearning of the slots and
    one script load), stored once."""
    name = f"lxcluster-moved-{uuid.uuid4().hex[:8]}"
    async with RedisTaskQueue(cluster.url, name, wait_replicas=1) as queue:
        await queue.enqueue(Job(task="t"))  # every script is loaded
        client = queue.client
        assert isinstance(client, RedisCluster)
        slot = key_slot(queue.keys.ready.encode())
        master = client.get_node_from_key(queue.keys.ready)
        other = next(n for n in client.get_primaries() if n.name != master.name)
        await client.execute_command("SCRIPT FLUSH", target_nodes=master)
        client.nodes_manager.slots_cache[slot] = [other]  # the stale map
        stored = await queue.enqueue(Job(task="t"))
        assert client.get_node_from_key(queue.keys.ready).name == master.name
        leased = await queue.dequeue(max_jobs=5, lease_seconds=30)
        assert sorted(d.job.id for d in leased if d.job is not None).count(stored) == 1
        assert len(leased) == 2
        await queue.purge()
