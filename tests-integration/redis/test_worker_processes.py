"""Real worker processes on one Redis queue: dropped connections, a rate limit shared
through Redis. Sharing a queue and SIGKILL are in the worker contract (test_contract.py)."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from lexigram.tasks.job import Job
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.testing import WorkerProcesses, eventually

EMPTY = QueueCounts(ready=0, delayed=0, running=0, failed=0)


def _jobs(queue: RedisTaskQueue, task: str, count: int, *args: object) -> list[Job]:
    return [Job(task=task, args=[f"k{i}", *args], queue=queue.queue_name) for i in range(count)]


async def _idle_workers(client: aioredis.Redis, ns: str) -> int:
    """Worker processes waiting for jobs: their fetch loop blocks in BLPOP on the wake-up list."""
    clients = await client.client_list()
    return sum(1 for c in clients if c["name"] == ns and c["cmd"] == "blpop")


async def test_client_kill_while_workers_run_loses_no_job(
    queue: RedisTaskQueue,
    client: aioredis.Redis,
    ns: str,
    workers: WorkerProcesses,
    tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    worker = workers.start(lease_seconds=2.0, stderr=log)
    await eventually(lambda: _idle_workers(client, ns), timeout=30)
    total = 600
    await queue.enqueue_many(_jobs(queue, "slow", total, 0.01))

    killed = 0
    for threshold in (100, 250, 400):
        await eventually(lambda t=threshold: len(workers.log.count("done")) >= t, timeout=30)
        killed += await _kill_clients(client, ns)
    assert killed >= 3, "the worker's connections should have been killed"

    await eventually(lambda: len(workers.log.count("done")) == total, timeout=60)
    assert min(workers.log.count("done").values()) >= 1
    await eventually(lambda: _async_eq(queue.counts(), EMPTY), timeout=15)
    assert worker.poll() is None, "the worker died instead of reconnecting"
    await workers.stop(worker)
    # redis-py reconnected and resent each interrupted command: the worker
    # never saw a failed fetch, ack or result write.
    assert "Error" not in log.read_text(), log.read_text()


async def test_rate_limit_holds_across_two_worker_processes(
    queue: RedisTaskQueue, client: aioredis.Redis, ns: str, workers: WorkerProcesses
) -> None:
    # The task is limited to 20/s (burst 1) through RedisRateLimiter; both
    # processes draw from the same budget, so 40 jobs take about 2 s in all.
    started = [workers.start(), workers.start()]
    await eventually(lambda: _async_ge(_idle_workers(client, ns), 2), timeout=30)
    count = 40
    await queue.enqueue_many(_jobs(queue, "limited", count))

    await eventually(lambda: len(workers.log.count("done")) == count, timeout=30)
    starts = sorted(line.at for line in workers.log.lines() if line.event == "start")
    assert len(starts) == count
    assert len(workers.log.pids("done")) == 2, "both processes should have run jobs"
    # Any 11 consecutive starts span at least 10 intervals of 50 ms (less a
    # little scheduling jitter): the combined rate never exceeded 20/s.
    window = 10
    tightest = min(starts[i + window] - starts[i] for i in range(count - window))
    assert tightest >= window / 20 * 0.9, f"{window + 1} jobs started within {tightest:.3f}s"
    assert starts[-1] - starts[0] >= (count - 1) / 20 * 0.9
    for worker in started:
        await workers.stop(worker)


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
