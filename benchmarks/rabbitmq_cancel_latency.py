"""Cancel-to-CancelledError latency on RabbitMQ paired with a job state store.

A worker (in this process) runs 100 ``async`` jobs that wait forever; each is
cancelled in turn through another queue instance (as the CLI would), and the
time from the ``cancel()`` call to the ``CancelledError`` inside the task is
recorded. Prints p50, p99 and max in milliseconds.

    python benchmarks/rabbitmq_cancel_latency.py [--store redis|postgres] [--jobs 100]

Uses ``AMQP_URL`` (default ``amqp://guest:guest@127.0.0.1:5672/``), ``REDIS_URL``
(default ``redis://127.0.0.1:6379/13``) or ``DATABASE_URL``
(default ``postgresql://postgres@127.0.0.1:5432/test``); a unique queue, Redis
namespace or schema, all removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from typing import Any

import asyncpg
from redis.asyncio import Redis

from lexigram.tasks import TaskProvider
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue


def store_config(kind: str, unique: str) -> dict[str, Any]:
    if kind == "redis":
        url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13")
        return {"type": "redis", "redis_url": url, "namespace": f"bench-cancel-{unique}"}
    dsn = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    return {"type": "postgres", "postgres_dsn": dsn, "schema": f"bench_cancel_{unique}"}


async def drop_store(store: dict[str, Any]) -> None:
    if store["type"] == "redis":
        client = Redis.from_url(store["redis_url"])
        keys = [k async for k in client.scan_iter(match=f"{store['namespace']}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    else:
        connection = await asyncpg.connect(store["postgres_dsn"])
        await connection.execute(f'DROP SCHEMA IF EXISTS "{store["schema"]}" CASCADE')
        await connection.close()


async def main(kind: str, jobs: int) -> None:
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    unique = uuid.uuid4().hex[:8]
    queue_name = f"bench-cancel-{unique}"
    store = store_config(kind, unique)
    options = {"amqp_url": amqp_url, "queue_name": queue_name, "state_store": store}
    worker = TaskProvider(queue=RabbitMQTaskQueue(**options), worker_count=jobs)
    started: set[str] = set()
    all_started = asyncio.Event()
    interrupted: dict[str, float] = {}
    heard = {str(n): asyncio.Event() for n in range(jobs)}

    @worker.task(name="wait_forever")
    async def wait_forever(key: str) -> None:
        started.add(key)
        if len(started) == jobs:
            all_started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            interrupted[key] = time.monotonic()
            heard[key].set()
            raise

    client = RabbitMQTaskQueue(**options)
    try:
        await worker.start()
        await client.connect()
        handles = [await wait_forever.enqueue(str(n)) for n in range(jobs)]
        await all_started.wait()
        await asyncio.sleep(0.5)  # every watcher is bound
        latencies = []
        for n, handle in enumerate(handles):
            sent = time.monotonic()
            await client.cancel(handle.id)
            await heard[str(n)].wait()
            latencies.append((interrupted[str(n)] - sent) * 1000)
        latencies.sort()
        p99 = latencies[max(0, round(len(latencies) * 0.99) - 1)]
        print(
            f"RabbitMQ + {kind} store, {jobs} running jobs: cancel to CancelledError "
            f"p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms, "
            f"max {latencies[-1]:.1f} ms"
        )
    finally:
        await worker.stop()
        await client.delete_topology()
        await client.disconnect()
        await worker.disconnect()
        await drop_store(store)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["redis", "postgres"], default="redis")
    parser.add_argument("--jobs", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.store, args.jobs))
