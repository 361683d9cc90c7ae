"""A Redis that goes away gives BackendConnectionError (URL redacted), never redis-py's errors.

Each test runs a Redis server of its own on a free loopback port and kills
it, so the shared test server is never touched.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from lexigram.tasks import BackendConnectionError
from lexigram.tasks.job import Job
from lexigram.tasks.ratelimit import Rate
from lexigram.tasks.redis import CacheBackendResultStore, RedisRateLimiter, RedisTaskQueue
from lexigram.tasks.results import JobResult
from lexigram.tasks.testing import eventually

PASSWORD = "hunter2"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OwnRedis:
    """A redis-server child process on a free port (no persistence)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is needed on PATH for the outage tests", pytrace=False)
        port = _free_port()
        self.url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
        options = {"port": str(port), "bind": "127.0.0.1", "save": "", "appendonly": "no"}
        options |= {"daemonize": "no", "requirepass": PASSWORD}
        args = [part for name, value in options.items() for part in (f"--{name}", value)]
        self.process = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL)

    async def ready(self) -> None:
        async def answers() -> bool:
            client = aioredis.Redis.from_url(self.url)
            try:
                return bool(await client.ping())
            except Exception:
                return False
            finally:
                await client.aclose()

        await eventually(answers, timeout=10, message="redis-server did not start")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    try:
        yield server
    finally:
        server.kill()


@pytest_asyncio.fixture
async def queue_on_own(own_redis: OwnRedis) -> AsyncIterator[RedisTaskQueue]:
    await own_redis.ready()
    queue = RedisTaskQueue(redis_url=own_redis.url, queue_name="outage")
    await queue.connect()
    try:
        yield queue
    finally:
        await queue.disconnect()


def _check(caught: pytest.ExceptionInfo[BackendConnectionError]) -> None:
    message = str(caught.value)
    assert PASSWORD not in message
    assert ":***@127.0.0.1:" in message
    assert caught.value.__cause__ is None and caught.value.__context__ is not None


async def test_enqueue_during_an_outage_raises_backend_connection_error(
    own_redis: OwnRedis, queue_on_own: RedisTaskQueue
) -> None:
    queue = queue_on_own
    await queue.enqueue(Job(task="outage.before", queue="outage"))
    assert (await queue.counts()).ready == 1
    own_redis.kill()

    with pytest.raises(BackendConnectionError) as caught:
        await queue.enqueue(Job(task="outage.during", queue="outage"))
    _check(caught)
    with pytest.raises(BackendConnectionError) as caught:
        await queue.enqueue_many([Job(task="outage.during", queue="outage") for _ in range(3)])
    _check(caught)


Call = Callable[[RedisTaskQueue], Awaitable[object]]


@pytest.mark.parametrize(
    "call",
    [
        lambda q: q.dequeue(max_jobs=1),
        lambda q: q.dequeue(max_jobs=1, wait=0.5),
        lambda q: q.counts(),
        lambda q: q.dead_letters(),
        lambda q: q.purge(),
        lambda q: q.push_raw(b"{}"),
    ],
    ids=["dequeue", "dequeue-waiting", "counts", "dead_letters", "purge", "push_raw"],
)
async def test_every_queue_call_during_an_outage_raises_backend_connection_error(
    own_redis: OwnRedis, queue_on_own: RedisTaskQueue, call: Call
) -> None:
    own_redis.kill()
    with pytest.raises(BackendConnectionError) as caught:
        await call(queue_on_own)
    _check(caught)


async def test_settling_during_an_outage_raises_backend_connection_error(
    own_redis: OwnRedis, queue_on_own: RedisTaskQueue
) -> None:
    queue = queue_on_own
    await queue.enqueue(Job(task="outage.settle", queue="outage"))
    [delivery] = await queue.dequeue(max_jobs=1)
    own_redis.kill()
    settles: list[Call] = [
        lambda q: q.ack(delivery),
        lambda q: q.nack(delivery, requeue=True),
        lambda q: q.extend_lease([delivery], 30),
    ]
    for settle in settles:
        with pytest.raises(BackendConnectionError) as caught:
            await settle(queue)
        _check(caught)


async def test_result_store_and_rate_limiter_during_an_outage(own_redis: OwnRedis) -> None:
    await own_redis.ready()
    store = CacheBackendResultStore(redis_url=own_redis.url)
    limiter = RedisRateLimiter(redis_url=own_redis.url, namespace="outage")
    await store.connect()
    await limiter.connect()
    try:
        await store.set("j1", JobResult.success("j1", 1))
        assert await limiter.acquire("k", Rate.parse("10/s")) == 0
        own_redis.kill()
        with pytest.raises(BackendConnectionError) as caught:
            await store.set("j2", JobResult.success("j2", 2))
        _check(caught)
        with pytest.raises(BackendConnectionError) as caught:
            await store.get("j1")
        _check(caught)
        with pytest.raises(BackendConnectionError) as caught:
            await limiter.acquire("k", Rate.parse("10/s"))
        _check(caught)
    finally:
        await store.disconnect()
        await limiter.disconnect()
