"""Where one enqueue's time goes, on Redis and PostgreSQL (not a test, not part of the harness).

    .venv/bin/python benchmarks/enqueue_profile.py [--n 10000] [--repeat 5] [redis] [postgres]
    .venv/bin/python benchmarks/enqueue_profile.py --cprofile redis   # top functions of one loop
    valgrind --tool=callgrind .venv/bin/python benchmarks/enqueue_profile.py \
        --only "lexigram enqueue" --n 1500 redis   # twice, --n 500 and 1500: the difference

For each backend, in alternating rounds (medians printed, in microseconds per
enqueue, wall-clock and this process's CPU, with the ratio of the raw loop's
wall time to ours in each round, and on Redis the server's own microseconds
per LPUSH and per EVALSHA from INFO commandstats, server-wide: use a private
redis-server for clean figures): the raw client's single-op loop as the
shared harness's raw adapters run it (redis.asyncio LPUSH of a small JSON document; asyncpg
INSERT into a one-index table), ``await task.enqueue(...)`` of a registered
task, and the client-side steps of that enqueue without the round trip:
building the job, encoding it (capability checks, JSON, size check), the
PRODUCER span (no SDK installed: no span is created) and, on Redis, stamping
and packing the EVALSHA call. What is left of the enqueue after those and the raw
round trip is the client's share of sending and reading the reply.

Uses Redis db 15 (``ENQ_REDIS_URL``) and the PostgreSQL database
``bench_enq_profile`` (server from ``ENQ_PG``), both emptied at the start
and the database dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import redis.asyncio as aredis

from lexigram.tasks import TaskProvider
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.redis._scripts import rq_timestamp
from lexigram.tasks.task import EnqueueOptions

REDIS_URL = os.environ.get("ENQ_REDIS_URL", "redis://127.0.0.1:6379/15")
PG = os.environ.get("ENQ_PG", "postgresql://postgres@127.0.0.1:5432")
PG_DB = "bench_enq_profile"

Loop = Callable[[int], Awaitable[tuple[float, float]]]


def _payload() -> str:
    return json.dumps({"mode": "noop", "enq": None})


async def _timed(n: int, step: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """Wall-clock and this process's CPU microseconds per call."""
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        await step()
    return (time.perf_counter() - started) / n * 1e6, (time.process_time() - cpu) / n * 1e6


def _timed_sync(n: int, step: Callable[[], Any]) -> tuple[float, float]:
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    return (time.perf_counter() - started) / n * 1e6, (time.process_time() - cpu) / n * 1e6


async def _provider(queue: Any) -> tuple[TaskProvider, Any]:
    provider = TaskProvider(queue=queue)

    @provider.task(name="bench_job")
    async def bench_job(mode: str, enq: float | None = None) -> None:
        pass

    await provider.connect()
    return provider, bench_job


def _client_steps(provider: TaskProvider, task: Any, queue: Any) -> dict[str, Loop]:
    """The Python steps of one enqueue, each alone (no I/O)."""
    job = task.job("noop", None)
    options = EnqueueOptions()

    async def build(n: int) -> tuple[float, float]:
        return _timed_sync(n, lambda: provider.build_job("bench_job", ("noop", None), {}, options))

    async def encode(n: int) -> tuple[float, float]:
        return _timed_sync(n, lambda: queue.encode_job(job))

    def span() -> None:
        with provider.telemetry.send(job, queue.system):
            pass

    async def send_span(n: int) -> tuple[float, float]:
        return _timed_sync(n, span)

    steps = {"build_job": build, "encode_job": encode, "span+inject": send_span}
    if isinstance(queue, RedisTaskQueue):
        data = queue.encode_job(job)
        script = queue._script("enqueue")

        async def pack(n: int) -> tuple[float, float]:
            def packed() -> bytes:  # what RedisTaskQueue._store sends: the stamp, then the job
                return script.pack([rq_timestamp(time.time()), *queue._enqueue_args(job, data)])

            return _timed_sync(n, packed)

        steps["pack EVALSHA"] = pack
    return steps


async def redis_loops() -> tuple[dict[str, Loop], Callable[[], Awaitable[None]]]:
    raw = aredis.Redis.from_url(REDIS_URL)
    await raw.flushdb()
    payload = _payload()
    provider, task = await _provider(RedisTaskQueue(redis_url=REDIS_URL, queue_name="bench"))

    async def raw_loop(n: int) -> tuple[float, float]:
        return await _timed(n, lambda: raw.lpush("bench-raw", payload))

    async def lexigram_loop(n: int) -> tuple[float, float]:
        return await _timed(n, lambda: task.enqueue("noop", None))

    loops = {"raw LPUSH": raw_loop, "lexigram enqueue": lexigram_loop}
    loops.update(_client_steps(provider, task, provider.queue))

    async def close() -> None:
        await raw.flushdb()
        await raw.aclose()
        await provider.disconnect()

    return loops, close


async def postgres_loops() -> tuple[dict[str, Loop], Callable[[], Awaitable[None]]]:
    admin = await asyncpg.connect(f"{PG}/postgres")
    await admin.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {PG_DB}")
    raw = await asyncpg.connect(f"{PG}/{PG_DB}")
    await raw.execute(
        "CREATE TABLE bench_jobs (id bigserial PRIMARY KEY, payload jsonb NOT NULL,"
        " status text NOT NULL DEFAULT 'queued', enqueued_at timestamptz NOT NULL DEFAULT now());"
        " CREATE INDEX bench_jobs_queued ON bench_jobs (id) WHERE status = 'queued'"
    )
    payload = _payload()
    queue = PostgresTaskQueue(postgres_dsn=f"{PG}/{PG_DB}", queue_name="bench")
    provider, task = await _provider(queue)

    async def raw_loop(n: int) -> tuple[float, float]:
        insert = "INSERT INTO bench_jobs (payload) VALUES ($1::jsonb)"
        return await _timed(n, lambda: raw.execute(insert, payload))

    async def lexigram_loop(n: int) -> tuple[float, float]:
        return await _timed(n, lambda: task.enqueue("noop", None))

    loops = {"raw INSERT": raw_loop, "lexigram enqueue": lexigram_loop}
    loops.update(_client_steps(provider, task, queue))

    async def close() -> None:
        await provider.disconnect()
        await raw.close()
        await admin.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        await admin.close()

    return loops, close


BACKENDS = {"redis": redis_loops, "postgres": postgres_loops}
RAW_LOOP = {"redis": "raw LPUSH", "postgres": "raw INSERT"}


async def _server_usec(backend: str) -> dict[str, tuple[int, int]]:
    """Redis's own count of calls and microseconds per command (server-wide)."""
    if backend != "redis":
        return {}
    client = aredis.Redis.from_url(REDIS_URL)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return {
        k: (v["calls"], v["usec"]) for k, v in stats.items() if k.endswith(("lpush", "evalsha"))
    }


async def measure(backend: str, n: int, repeat: int) -> None:
    loops, close = await BACKENDS[backend]()
    try:
        for loop in loops.values():  # warm up: connections, prepared statements
            await loop(200)
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in loops}
        before = await _server_usec(backend)
        for _ in range(repeat):
            for name, loop in loops.items():
                figures[name].append(await loop(n))
        after = await _server_usec(backend)
    finally:
        await close()
    print(f"\n{backend}: microseconds per enqueue, median of {repeat} rounds of {n}")
    print(f"  {'':<18} {'wall':>8} {'CPU':>8}   (wall of each round)")
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for name, values in figures.items():
        wall[name] = statistics.median(v[0] for v in values)
        cpu[name] = statistics.median(v[1] for v in values)
        rounds = ", ".join(f"{v[0]:.1f}" for v in values)
        print(f"  {name:<18} {wall[name]:8.1f} {cpu[name]:8.1f}   ({rounds})")
    raw = next(iter(wall))
    # Each round's raw and lexigram loops ran back to back, under the same load.
    paired = [r[0] / o[0] for r, o in zip(figures[raw], figures["lexigram enqueue"], strict=True)]
    print(
        f"  lexigram / raw, enqueues per second: {wall[raw] / wall['lexigram enqueue']:.2f} "
        f"(median of the rounds' own ratios {statistics.median(paired):.2f})"
    )
    print(
        f"  lexigram - raw: {wall['lexigram enqueue'] - wall[raw]:.1f} us wall, "
        f"{cpu['lexigram enqueue'] - cpu[raw]:.1f} us CPU of this process"
    )
    for command, (calls, usec) in after.items():
        calls -= before.get(command, (0, 0))[0]
        usec -= before.get(command, (0, 0))[1]
        if calls:
            print(f"  server {command}: {usec / calls:.1f} us per call ({calls} calls)")


async def profile(backend: str, n: int, name: str = "lexigram enqueue") -> None:
    loops, close = await BACKENDS[backend]()
    try:
        await loops[name](200)
        profiler = cProfile.Profile()
        profiler.enable()
        await loops[name](n)
        profiler.disable()
    finally:
        await close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(60)
    print(out.getvalue())


async def only(backend: str, name: str, n: int) -> None:
    loops, close = await BACKENDS[backend]()
    try:
        await loops[name](200)
        await loops[name](n)
    finally:
        await close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("backends", nargs="*", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cprofile", action="store_true", help="cProfile one lexigram loop")
    parser.add_argument(
        "--only",
        metavar="LOOP",
        help="run only this loop, n times, and print nothing (for valgrind --tool=callgrind: "
        "the difference of two runs with different --n is the cost of the extra calls)",
    )
    args = parser.parse_args()
    for backend in args.backends:
        if args.only:
            asyncio.run(only(backend, args.only, args.n))
        elif args.cprofile:
            asyncio.run(profile(backend, args.n))
            asyncio.run(profile(backend, args.n, RAW_LOOP[backend]))
        else:
            asyncio.run(measure(backend, args.n, args.repeat))


if __name__ == "__main__":
    main()
