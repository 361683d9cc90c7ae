"""Concurrency limits on Redis: fairness between tenants, limits across worker processes,
slots of killed workers, rate limits per key, the batched limiter itself."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Delivery
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.redis import RedisRateLimiter, RedisTaskQueue, _scripts, concurrency
from lexigram.tasks.redis.concurrency import RELEASE_DELAY, RedisConcurrencyLimiter

sys.path.insert(0, str(Path(__file__).parents[1]))
import itertools

import limits_cases

sys.path.insert(0, str(Path(__file__).parent))
from _unknown_scripts import never_loaded


@pytest.fixture
def workers(
    redis_url: str, queue: RedisTaskQueue, tmp_path: Path
) -> Iterator[limits_cases.Workers]:
    started = limits_cases.Workers("redis", redis_url, queue.queue_name, "", tmp_path)
    try:
        yield started
    finally:
        started.close()


async def test_limiter_takes_all_or_none_across_clients(redis_url: str, ns: str) -> None:
    one = RedisConcurrencyLimiter(redis_url, namespace=ns)
    two = RedisConcurrencyLimiter(redis_url, namespace=ns)
    try:
        # Asked in one turn of the loop: one script call, answered in order.
        taken = await asyncio.gather(
            one.acquire([("a", 1), ("b", 2)], "h1", 60),
            one.acquire([("b", 2), ("a", 1)], "h2", 60),
            one.acquire([("b", 2)], "h3", 60),
        )
        assert taken == [True, False, True]
        assert not await two.acquire([("b", 2)], "h4", 60)
        await one.release(["a", "b"], "h1")  # queued for the next batch ...
        await one.flush()  # ... sent now, before the other client asks
        assert await two.acquire([("b", 2)], "h4", 0.2)
        assert await two.acquire([("a", 1)], "h5", 0.2)
        await two.extend([("a", "h5")], 60)
        await asyncio.sleep(0.4)  # h4's lease (not extended) lapses; h5's was extended
        assert await one.acquire([("b", 2)], "h6", 60)
        assert not await one.acquire([("a", 1)], "h6", 60)
    finally:
        await one.disconnect()
        await two.disconnect()


async def test_limiter_escapes_separators_alike_in_every_call(redis_url: str, ns: str) -> None:
    # The batch script's fields are tab- and newline-separated: such names and
    # holders are escaped, and extend() must touch the slot the batch took.
    one = RedisConcurrencyLimiter(redis_url, namespace=ns)
    two = RedisConcurrencyLimiter(redis_url, namespace=ns)
    name, holder = "tenant 50%\tA\nB", "w/1\t%"
    try:
        assert await one.acquire([(name, 1)], holder, 0.2)
        assert await one.acquire_many([([(name, 1)], "other")], 60) == [False]
        await one.extend([(name, holder)], 60)
        await asyncio.sleep(0.4)  # the lease would have lapsed without the extend
        assert not await two.acquire([(name, 1)], "other", 60)
        await one.release([name], holder)
        await one.flush()
        assert await two.acquire_many([([(name, 1)], "other")], 60) == [True]
        # The escaped spelling of the name, as a name of its own, is another semaphore.
        assert await two.acquire([("tenant 50%25%09A%0AB", 1)], "third", 60)
    finally:
        await one.disconnect()
        await two.disconnect()


async def test_limiter_goes_on_after_its_connection_is_dropped(redis_url: str, ns: str) -> None:
    limiter = RedisConcurrencyLimiter(redis_url, namespace=ns)
    other = Redis.from_url(redis_url)
    try:
        assert await limiter.acquire([("a", 2)], "h1", 60)
        assert limiter._client is not None
        await other.client_kill_filter(_id=await limiter._client.client_id())
        assert await limiter.acquire_many([([("a", 2)], "h2")], 60) == [True]
        assert await limiter.acquire_many([([("a", 2)], "h3")], 60) == [False]
    finally:
        await limiter.disconnect()
        await other.aclose()


async def test_tenant_b_is_not_starved_by_tenant_a_backlog(queue: RedisTaskQueue) -> None:
    # Enqueued through the task, as users do: the lease finds A's slots full.
    await limits_cases.fairness(queue, workers=20, registered=True)


# "registered": the producer has the task, so the lease takes the slots its jobs name.
@pytest.mark.parametrize("registered", [False, True], ids=["by-name", "registered"])
async def test_per_key_limit_holds_across_two_worker_processes(
    queue: RedisTaskQueue, workers: limits_cases.Workers, registered: bool
) -> None:
    await limits_cases.limit_across_processes(queue, workers, registered)


@pytest.mark.parametrize("registered", [False, True], ids=["by-name", "registered"])
async def test_a_killed_workers_slot_frees_when_its_lease_lapses(
    queue: RedisTaskQueue, workers: limits_cases.Workers, registered: bool
) -> None:
    await limits_cases.killed_worker_frees_its_slot(queue, workers, registered)


async def test_rate_limit_key_paces_each_key_through_redis(
    queue: RedisTaskQueue, redis_url: str, ns: str
) -> None:
    limiter = RedisRateLimiter(redis_url, namespace=ns)
    provider = TaskProvider(queue=queue, worker_count=9, rate_limiter=limiter)
    started: list[tuple[str, float]] = []

    @provider.task(name=f"paced-{uuid.uuid4().hex}", rate_limit="5/s", rate_limit_key=lambda k: k)
    async def paced(k: str) -> None:
        started.append((k, asyncio.get_running_loop().time()))

    try:
        async with provider:
            for k in ("x", "x", "x", "y", "y", "y"):
                await paced.enqueue(k)
            await limits_cases.eventually(lambda: len(started) == 6, timeout=30)
    finally:
        await limiter.disconnect()  # the application's limiter: the provider leaves it open
    await queue.connect()  # the provider closed it; the fixture purges it
    keys = [k for k, _ in started]
    assert set(keys[:2]) == {"x", "y"}  # y's first run does not wait behind x's
    for key in "xy":
        times = [at for k, at in started if k == key]
        assert all(b - a >= 0.15 for a, b in itertools.pairwise(times))


async def test_a_stopped_worker_sends_its_last_releases_and_leaves_no_connection(
    redis_url: str, ns: str
) -> None:
    # Jobs that end during shutdown queue their releases (sent RELEASE_DELAY later);
    # the worker's own limiter, on the queue's connection, sends them as the worker
    # stops, not after the provider has closed that connection (which reopened it).
    named = f"{redis_url}{'&' if '?' in redis_url else '?'}client_name={ns}"
    queue = RedisTaskQueue(redis_url=named, queue_name=f"lxtest-{uuid.uuid4().hex[:10]}")
    provider = TaskProvider(queue=queue, worker_count=2)
    started: list[str] = []

    @provider.task(
        name=f"{queue.queue_name}.keyed",
        concurrency_key=lambda key: key,
        max_concurrency_per_key=1,
    )
    async def keyed(key: str) -> None:
        started.append(key)
        await asyncio.sleep(0.2)  # still running when the provider is asked to stop

    async with provider:
        for key in ("k1", "k2"):
            await keyed.enqueue(key)
        await limits_cases.eventually(lambda: len(started) == 2, timeout=30)
    # Timers run in deadline order: a release planned before this sleep has been sent.
    await asyncio.sleep(RELEASE_DELAY * 4)
    observer = RedisTaskQueue(redis_url=redis_url, queue_name=queue.queue_name)
    async with observer:
        clients = await observer.client.client_list()
        assert [c for c in clients if c["name"] == ns] == []
        holders = RedisConcurrencyLimiter.for_queue(observer)
        for key in ("k1", "k2"):
            assert await observer.client.zcard(holders.key(f"task:{keyed.name}:key:{key}")) == 0
        await observer.purge()


async def _leased_and_held(
    queue: RedisTaskQueue, limiter: RedisConcurrencyLimiter, name: str
) -> Delivery:
    """A job leased from ``queue`` whose slot of ``name`` holder "h1" holds."""
    await queue.enqueue(Job(task="limits.carried", queue=queue.queue_name))
    [delivery] = await queue.dequeue(max_jobs=1)
    assert await limiter.acquire([(name, 1)], "h1", 60)
    assert await queue.client.zcard(limiter.key(name)) == 1
    return delivery


@pytest.mark.parametrize("settle", ["ack", "nack"])
async def test_the_queue_limiters_releases_go_with_the_next_ack_or_nack(
    queue: RedisTaskQueue, monkeypatch: pytest.MonkeyPatch, settle: str
) -> None:
    # A job's slots are given back as it ends, just before it is acked (or put
    # back): that call's write carries them, without waiting for RELEASE_DELAY
    # (made long here, so only the ack or nack can have sent them).
    monkeypatch.setattr(concurrency, "RELEASE_DELAY", 60.0)
    limiter = RedisConcurrencyLimiter.for_queue(queue)
    name = f"{queue.queue_name}:carried"
    try:
        delivery = await _leased_and_held(queue, limiter, name)
        limiter.release_nowait([name], "h1")
        if settle == "ack":
            await queue.ack_many([delivery])
        else:
            await queue.nack(delivery, requeue=True)
        # Sent and answered in the call's own round trip.
        assert await queue.client.exists(limiter.key(name)) == 0
        counts = await queue.counts()
        assert (counts.running, counts.ready) == ((0, 0) if settle == "ack" else (0, 1))
    finally:
        await limiter.disconnect()
    # A limiter that disconnected is no longer carried.
    assert limiter not in queue._release_sources


@pytest.mark.parametrize("unknown", ["ack", "limiter"])
async def test_releases_an_ack_could_not_carry_are_sent_by_their_limiter(
    queue: RedisTaskQueue, monkeypatch: pytest.MonkeyPatch, unknown: str
) -> None:
    # Either script of the shared write unknown to the server: the ack goes again
    # alone (acking twice is harmless) and the limiter sends the releases itself,
    # loading its script if need be.
    limiter = RedisConcurrencyLimiter.for_queue(queue)
    name = f"{queue.queue_name}:uncarried"
    try:
        delivery = await _leased_and_held(queue, limiter, name)
        if unknown == "ack":
            script = never_loaded(_scripts.SCRIPTS["ack"])
            monkeypatch.setitem(_scripts.SCRIPTS, "ack", script)
        else:
            assert limiter._batch is not None
            script = never_loaded(limiter._batch.script)
            limiter._batch = _scripts.PreparedScript(
                queue.client, script, limiter._batch.keys, limiter._batch.head
            )
        limiter.release_nowait([name], "h1")
        await queue.ack_many([delivery])
        assert (await queue.counts()).running == 0

        async def released() -> bool:
            return await queue.client.exists(limiter.key(name)) == 0

        await limits_cases.eventually(released, timeout=10)
        assert await queue.client.script_exists(script.sha) == [True]
    finally:
        await limiter.disconnect()
