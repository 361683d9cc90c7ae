"""Bad URLs fail at connect with a redacted message; bad queue entries are dead-lettered."""

from __future__ import annotations

import hashlib
import socket
import uuid

import pytest
import redis.asyncio as aioredis

from lexigram.tasks import BackendConnectionError, TaskBackendRegistry, TaskProvider
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.redis import CacheBackendResultStore, RedisRateLimiter, RedisTaskQueue, _scripts
from lexigram.tasks.testing import eventually


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_unreachable_server_fails_at_connect_with_the_password_redacted() -> None:
    url = f"redis://:hunter2@127.0.0.1:{_closed_port()}/0"
    queue = RedisTaskQueue(redis_url=url, queue_name="never")
    with pytest.raises(BackendConnectionError) as caught:
        await queue.connect()
    message = str(caught.value)
    assert "hunter2" not in message
    assert "redis://:***@127.0.0.1" in message
    assert "cannot connect" in message
    assert "hunter2" not in repr(queue)
    await queue.disconnect()  # closing a queue that never connected does nothing


async def test_wrong_password_fails_at_connect_with_the_password_redacted(redis_url: str) -> None:
    # The test server has no password set, so any password is refused.
    host = redis_url.split("://", 1)[1]
    url = f"redis://intruder:hunter2@{host}"
    with pytest.raises(BackendConnectionError) as caught:
        await RedisTaskQueue(redis_url=url).connect()
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)


async def test_malformed_url_fails_at_connect_naming_it() -> None:
    with pytest.raises(BackendConnectionError, match="Redis"):
        await RedisTaskQueue(redis_url="redis://localhost:notaport/0").connect()


async def test_result_store_and_rate_limiter_report_connect_errors_the_same_way() -> None:
    url = f"redis://:hunter2@127.0.0.1:{_closed_port()}/0"
    with pytest.raises(BackendConnectionError) as caught:
        await CacheBackendResultStore(redis_url=url).connect()
    assert "hunter2" not in str(caught.value)
    with pytest.raises(BackendConnectionError) as caught:
        await RedisRateLimiter(redis_url=url).connect()
    assert "hunter2" not in str(caught.value)


async def test_registry_builds_the_backend_from_config_keys(redis_url: str) -> None:
    queue = TaskBackendRegistry.default().create(
        "redis", redis_url=redis_url, queue_name="configured"
    )
    assert isinstance(queue, RedisTaskQueue)
    assert queue.queue_name == "configured"
    assert queue.system == "redis"


async def test_worker_dead_letters_malformed_entries_and_goes_on(
    queue: RedisTaskQueue, redis_url: str
) -> None:
    worker_queue = RedisTaskQueue(redis_url=redis_url, queue_name=queue.queue_name)
    provider = TaskProvider(queue=worker_queue, worker_count=2, poll_interval=0.1)
    ran: list[int] = []

    @provider.task(name="work")
    async def work(n: int) -> None:
        ran.append(n)

    garbage = b"\x00 not a job at all"
    await queue.push_raw(b'{"id": "x", "task": 42}')  # a job hash holding an invalid job
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await raw.rpush(queue.keys.ready, garbage)  # an entry with no job hash at all
    finally:
        await raw.aclose()
    await provider.enqueue("work", 1)

    async with provider:
        await eventually(lambda: ran == [1], timeout=10)
        counts = await eventually(
            lambda: _settled(queue), timeout=10, message="malformed entries not dead-lettered"
        )
    assert counts == QueueCounts(ready=0, delayed=0, running=0, failed=2)
    letters = await queue.dead_letters()
    assert {letter.payload for letter in letters} == {b'{"id": "x", "task": 42}', garbage}
    assert all(letter.job_id is None for letter in letters)
    reasons = " | ".join(letter.reason for letter in letters)
    assert "task" in reasons  # the invalid field is named
    assert "no job stored" in reasons


async def test_connect_and_disconnect_are_idempotent(redis_url: str) -> None:
    queue = RedisTaskQueue(redis_url=redis_url, queue_name=f"lxtest-{uuid.uuid4().hex[:8]}")
    await queue.connect()
    client = queue.client
    await queue.connect()
    assert queue.client is client
    await queue.disconnect()
    await queue.disconnect()
    with pytest.raises(RuntimeError, match="not connected"):
        await queue.counts()


async def _settled(queue: RedisTaskQueue) -> QueueCounts | None:
    counts = await queue.counts()
    return counts if counts.failed == 2 and counts.pending == 0 else None


async def test_scripts_missing_on_the_server_are_loaded_again(
    queue: RedisTaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As after a Redis restart or SCRIPT FLUSH: the server does not know the
    # lease script's SHA (a unique comment makes a script never loaded before).
    def unknown_lease_script() -> _scripts.Script:
        source = f"-- {uuid.uuid4().hex}\n{_scripts.SCRIPTS['lease'].source}"
        sha = hashlib.sha1(source.encode()).hexdigest()
        monkeypatch.setitem(_scripts.SCRIPTS, "lease", _scripts.Script("lease", source, sha))
        return _scripts.SCRIPTS["lease"]

    script = unknown_lease_script()
    assert await queue.client.script_exists(script.sha) == [False]
    assert await queue.dequeue(max_jobs=1) == []  # a plain EVALSHA
    assert await queue.client.script_exists(script.sha) == [True]

    # The queue is empty now, so the next dequeue waits (BLPOP + EVALSHA in one write).
    script = unknown_lease_script()
    await queue.enqueue(Job(task="faults.after_restart", queue=queue.queue_name))
    [delivery] = await queue.dequeue(max_jobs=1, wait=2.0)
    assert delivery.job is not None
    assert await queue.client.script_exists(script.sha) == [True]
