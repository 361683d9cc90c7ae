"""Real worker processes on one Redis queue: sharing, SIGKILL, dropped connections, rate limits."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis

from lexigram.tasks.job import Job
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.testing import eventually

Spawn = Callable[..., "subprocess.Popen[bytes]"]
EMPTY = QueueCounts(ready=0, delayed=0, running=0, failed=0)


def _jobs(queue: RedisTaskQueue, task: str, count: int, **fields: object) -> list[Job]:
    return [
        Job(task=task, args=[f"k{i}"], queue=queue.queue_name, **fields)  # type: ignore[arg-type]
        for i in range(count)
    ]


async def _idle_workers(client: aioredis.Redis, ns: str) -> int:
    """Worker processes waiting for jobs: their fetch loop blocks in BLPOP on the wake-up list."""
    clients = await client.client_list()
    return sum(1 for c in clients if c["name"] == ns and c["cmd"] == "blpop")


async def _done(client: aioredis.Redis, ns: str) -> dict[str, int]:
    raw = await client.hgetall(f"{ns}:done")
    return {k.decode(): int(v) for k, v in raw.items()}


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, "the worker did not shut down cleanly on SIGTERM"


async def test_two_worker_processes_share_a_queue_and_run_each_job_once(
    queue: RedisTaskQueue, client: aioredis.Redis, ns: str, spawn: Spawn
) -> None:
    workers = [spawn(queue), spawn(queue)]
    await eventually(lambda: _async_ge(_idle_workers(client, ns), 2), timeout=30)

    await queue.enqueue_many(_jobs(queue, "slow_record", 300))

    done = await eventually(lambda: _complete(client, ns, 300), timeout=30)
    assert set(done.values()) == {1}, "a job ran more than once"
    assert await client.scard(f"{ns}:pids") == 2, "both processes should have taken jobs"
    for worker in workers:
        _stop(worker)
    assert await queue.counts() == EMPTY


async def test_sigkilled_worker_job_is_redelivered_and_completes_exactly_once(
    queue: RedisTaskQueue, client: aioredis.Redis, ns: str, spawn: Spawn
) -> None:
    victim = spawn(queue, lease_seconds=1.0)
    [job] = _jobs(queue, "hang_once", 1, max_retries=2)
    await queue.enqueue(job)
    hanging_pid = await eventually(lambda: client.get(f"{ns}:hanging"), timeout=30)
    assert int(hanging_pid) == victim.pid
    victim.kill()
    victim.wait(timeout=10)
    assert (await queue.counts()).running == 1, "the killed worker's lease should still be held"

    survivor = spawn(queue, lease_seconds=1.0)
    done = await eventually(lambda: _complete(client, ns, 1), timeout=30)
    assert done == {"k0": 1}
    assert int(await client.get(f"{ns}:started:k0")) == 2
    await eventually(lambda: _async_eq(queue.counts(), EMPTY), timeout=10)
    _stop(survivor)
    assert await _done(client, ns) == {"k0": 1}, "the job completed more than once"


async def test_client_kill_while_workers_run_loses_no_job(
    queue: RedisTaskQueue, client: aioredis.Redis, ns: str, spawn: Spawn, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    worker = spawn(queue, lease_seconds=2.0, log=log)
    await eventually(lambda: _idle_workers(client, ns), timeout=30)
    total = 600
    await queue.enqueue_many(_jobs(queue, "slow_record", total))

    killed = 0
    for threshold in (100, 250, 400):
        await eventually(lambda t=threshold: _complete(client, ns, t, at_least=True), timeout=30)
        killed += await _kill_clients(client, ns)
    assert killed >= 3, "the worker's connections should have been killed"

    done = await eventually(lambda: _complete(client, ns, total), timeout=60)
    assert min(done.values()) >= 1
    await eventually(lambda: _async_eq(queue.counts(), EMPTY), timeout=15)
    assert worker.poll() is None, "the worker died instead of reconnecting"
    _stop(worker)
    # redis-py reconnected and resent each interrupted command: the worker
    # never saw a failed fetch, ack or result write.
    assert "Error" not in log.read_text(), log.read_text()


async def test_rate_limit_holds_across_two_worker_processes(
    queue: RedisTaskQueue, client: aioredis.Redis, ns: str, spawn: Spawn
) -> None:
    # The task is limited to 20/s (burst 1) through RedisRateLimiter; both
    # processes draw from the same budget, so 40 jobs take about 2 s in all.
    workers = [spawn(queue), spawn(queue)]
    await eventually(lambda: _async_ge(_idle_workers(client, ns), 2), timeout=30)
    count = 40
    await queue.enqueue_many(_jobs(queue, "limited", count))

    await eventually(lambda: _complete(client, ns, count), timeout=30)
    starts = sorted(float(t) for t in await client.lrange(f"{ns}:starts", 0, -1))
    assert len(starts) == count
    assert await client.scard(f"{ns}:pids") == 2, "both processes should have run jobs"
    # Any 11 consecutive starts span at least 10 intervals of 50 ms (less a
    # little scheduling jitter): the combined rate never exceeded 20/s.
    window = 10
    tightest = min(starts[i + window] - starts[i] for i in range(count - window))
    assert tightest >= window / 20 * 0.9, f"{window + 1} jobs started within {tightest:.3f}s"
    assert starts[-1] - starts[0] >= (count - 1) / 20 * 0.9
    for worker in workers:
        _stop(worker)


async def _complete(
    client: aioredis.Redis, ns: str, count: int, *, at_least: bool = False
) -> dict[str, int] | None:
    done = await _done(client, ns)
    enough = len(done) >= count if at_least else len(done) == count
    return done if enough else None


async def _kill_clients(client: aioredis.Redis, ns: str) -> int:
    """CLIENT KILL every connection of the worker (they carry the client name ``ns``)."""
    killed = 0
    for info in await client.client_list():
        if info["name"] == ns:
            killed += await client.client_kill_filter(_id=info["id"])
    return killed


async def _async_eq(awaitable: object, expected: object) -> bool:
    return bool(await awaitable == expected)  # type: ignore[misc]


async def _async_ge(awaitable: object, minimum: int) -> bool:
    return bool(await awaitable >= minimum)  # type: ignore[misc,operator]
