"""No-op drain on a Redis Cluster: a queue of four shards against one shard.

    python benchmarks/redis_cluster_shards.py [N] [REPEATS]
    python benchmarks/redis_cluster_shards.py wait [N] [REPEATS]

Starts a cluster of three masters and three replicas on loopback ports
7220-7225 (``tests-integration/redis/_cluster_nodes.py``; stopped by PID at
the end). Per repeat (default 3), for shards=1 then shards=4: enqueues N
jobs (default 20,000) with ``enqueue_many``, each job INCRs a counter as the
harness's jobs do, then runs ``lexigram-tasks worker --processes 2 -c 50``
and measures jobs/s from the first completion to the last. Prints every run
and the medians. The counter lives on the single server 127.0.0.1:6379, db
13 (``SHARDS_COUNTER_URL`` to change it), flushed before and after.

With ``wait``: single enqueues from one producer (N per batch, default 2,000)
onto one shard, alternating batches with ``wait_replicas=0`` and ``1``,
REPEATS pairs (default 5); prints each batch's rate and the median ratio.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from lexigram.tasks import TaskProvider
from lexigram.tasks.redis import RedisTaskQueue

HERE = Path(__file__).resolve().parent
CLUSTER_URL = os.environ.get("SHARDS_CLUSTER_URL", "")
SHARDS = int(os.environ.get("SHARDS_SHARDS", "1"))
COUNTER_URL = os.environ.get("SHARDS_COUNTER_URL", "redis://127.0.0.1:6379/13")
COUNTER = "shards-bench:count"
FIRST_PORT = 7220

provider = TaskProvider(
    queue=RedisTaskQueue(CLUSTER_URL or "redis+cluster://127.0.0.1:7220", "bench", shards=SHARDS)
)
_client: list[object] = []


@provider.task(name="noop")
async def noop() -> None:
    import redis.asyncio as aioredis

    if not _client:
        _client.append(aioredis.Redis.from_url(COUNTER_URL))
    await _client[0].incr(COUNTER)  # type: ignore[attr-defined]


async def fill(url: str, shards: int, n: int) -> None:
    async with RedisTaskQueue(url, "bench", shards=shards) as queue:
        for start in range(0, n, 1000):
            await queue.enqueue_many([noop.job() for _ in range(min(1000, n - start))])


async def purge(url: str, shards: int) -> None:
    async with RedisTaskQueue(url, "bench", shards=shards) as queue:
        await queue.purge()


def drain(url: str, shards: int, n: int) -> float:
    counter = redis.Redis.from_url(COUNTER_URL)
    counter.delete(COUNTER)
    asyncio.run(fill(url, shards, n))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        SHARDS_CLUSTER_URL=url,
        SHARDS_SHARDS=str(shards),
    )
    command = [sys.executable, "-m", "lexigram.tasks.cli", "worker", "redis_cluster_shards"]
    command += ["--processes", "2", "-c", "50", "--log-level", "warning"]
    worker = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        while int(counter.get(COUNTER) or 0) < 1:
            time.sleep(0.005)
        started = time.monotonic()
        while int(counter.get(COUNTER) or 0) < n:
            time.sleep(0.02)
        elapsed = time.monotonic() - started
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        counter.delete(COUNTER)
        asyncio.run(purge(url, shards))
    return (n - 1) / elapsed


async def enqueue_rate(url: str, wait_replicas: int, n: int) -> float:
    async with RedisTaskQueue(url, "bench-wait", wait_replicas=wait_replicas) as queue:
        jobs = [noop.job() for _ in range(n)]
        started = time.perf_counter()
        for job in jobs:
            await queue.enqueue(job)
        elapsed = time.perf_counter() - started
        await queue.purge()
    return n / elapsed


def main_wait(n: int, repeats: int) -> None:
    from _cluster_nodes import ClusterNodes

    with tempfile.TemporaryDirectory() as directory:
        nodes = ClusterNodes(Path(directory), FIRST_PORT).start()
        try:
            ratios = []
            for repeat in range(repeats):
                plain = asyncio.run(enqueue_rate(nodes.url, 0, n))
                waiting = asyncio.run(enqueue_rate(nodes.url, 1, n))
                ratios.append(waiting / plain)
                print(
                    f"pair {repeat + 1}: {plain:,.0f} enqueues/s, with wait_replicas=1 "
                    f"{waiting:,.0f} ({waiting / plain:.0%})",
                    flush=True,
                )
        finally:
            nodes.stop()
    print(f"\nwait_replicas=1 / 0, median of {repeats} pairs: {statistics.median(ratios):.0%}")


def main(n: int, repeats: int) -> None:
    from _cluster_nodes import ClusterNodes

    with tempfile.TemporaryDirectory() as directory:
        nodes = ClusterNodes(Path(directory), FIRST_PORT).start()
        try:
            rates: dict[int, list[float]] = {1: [], 4: []}
            for repeat in range(repeats):
                for shards in rates:
                    rate = drain(nodes.url, shards, n)
                    rates[shards].append(rate)
                    print(f"repeat {repeat + 1}, shards={shards}: {rate:,.0f} jobs/s", flush=True)
        finally:
            nodes.stop()
    one, four = statistics.median(rates[1]), statistics.median(rates[4])
    print(f"\n| shards | jobs/s (median of {repeats}) | runs |\n|---|--:|---|")
    for shards, median in ((1, one), (4, four)):
        runs = ", ".join(f"{rate:,.0f}" for rate in rates[shards])
        print(f"| {shards} | {median:,.0f} | {runs} |")
    print(f"\n4 shards / 1 shard: {four / one:.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent / "tests-integration" / "redis"))
    arguments = sys.argv[1:]
    if arguments[:1] == ["wait"]:
        numbers = [int(a) for a in arguments[1:]]
        main_wait(*(numbers + [2000, 5][len(numbers) :]))
    else:
        numbers = [int(a) for a in arguments]
        main(*(numbers + [20000, 3][len(numbers) :]))
