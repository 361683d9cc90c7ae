"""A chord of 1,000 no-op steps: time from enqueue to the callback done (not a test).

    python benchmarks/workflow_chord.py [--n 1000] [--repeat 3]
        [--systems lexigram-redis,lexigram-postgres,celery-redis]
        [--celery-python /path/to/venv/bin/python]

Each measurement starts ONE worker process (50 concurrent jobs: lexigram's
``worker_count=50``, Celery's ``--pool=threads -c 50``) on a clean broker,
waits until it is ready, then enqueues ``chord(group(noop x N), done)`` and
waits for the callback; the callback writes the time it ran. Reported:
``seconds`` from just before the enqueue to the callback, and ``enqueue_s``,
the enqueue call alone. Systems run one after another, interleaved over the
repeats; the table shows medians.

Celery runs from its own virtualenv (``--celery-python``; make one with
``python -m venv V && V/bin/pip install -r
benchmarks/adapters/celery-redis-cpu.requirements.txt``), through
``workflow_chord_celery.py``. Redis db 11 (lexigram) and 5 (Celery, broker
and result backend) are flushed; PostgreSQL database ``bench_wf_chord``
is dropped and recreated. Services as in ``../shared/bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REDIS_URL = "redis://127.0.0.1:6379/11"
PG_SERVER = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
PG_DB = "bench_wf_chord"
HERE = Path(__file__).resolve().parent
CONCURRENCY = 50


def build(system: str) -> Any:
    from lexigram.tasks import TaskProvider

    if system == "lexigram-redis":
        from lexigram.tasks.redis import RedisTaskQueue

        queue: Any = RedisTaskQueue(REDIS_URL, "wfbench")
    else:
        from lexigram.tasks.postgres import PostgresTaskQueue

        queue = PostgresTaskQueue(f"{PG_SERVER}/{PG_DB}", "wfbench")
    provider = TaskProvider(queue=queue, worker_count=CONCURRENCY, poll_interval=0.05)

    @provider.task(name="wfbench.noop")
    async def noop() -> None:
        return None

    @provider.task(name="wfbench.done")
    async def done(results: list[None]) -> int:
        import redis.asyncio as aioredis

        marker = aioredis.Redis.from_url(REDIS_URL)
        await marker.set("wfbench:done", repr(time.time()))
        await marker.aclose()
        return len(results)

    return provider


async def worker(system: str) -> None:
    import redis.asyncio as aioredis

    provider = build(system)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with provider:
        marker = aioredis.Redis.from_url(REDIS_URL)
        await marker.set("wfbench:ready", "1")
        await marker.aclose()
        await stop.wait()


async def clean(system: str) -> None:
    import asyncpg
    import redis.asyncio as aioredis

    marker = aioredis.Redis.from_url(REDIS_URL)
    await marker.flushdb()
    await marker.aclose()
    if system == "lexigram-postgres":
        admin = await asyncpg.connect(f"{PG_SERVER}/postgres")
        await admin.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {PG_DB}")
        await admin.close()


async def measure_lexigram(system: str, n: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from lexigram.tasks import chord, group

    await clean(system)
    provider = build(system)
    await provider.connect()  # creates the schema before the worker starts
    marker = aioredis.Redis.from_url(REDIS_URL)
    process = await asyncio.create_subprocess_exec(sys.executable, __file__, "_worker", system)
    try:
        # Polls a key the worker process writes: no event crosses processes.
        while not await marker.get("wfbench:ready"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        noop, done = provider.tasks["wfbench.noop"], provider.tasks["wfbench.done"]
        shape = chord(group(noop.s() for _ in range(n)), done.s())
        started = time.time()
        handle = await shape.enqueue()
        enqueued = time.time()
        while (stamp := await marker.get("wfbench:done")) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        finished = float(stamp)
        assert await handle.result(timeout=60) == n
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
        await marker.aclose()
        await provider.disconnect()
    return {
        "system": system,
        "n": n,
        "seconds": round(finished - started, 4),
        "enqueue_s": round(enqueued - started, 4),
    }


def measure_celery(python: str, n: int) -> dict[str, Any]:
    script = HERE / "workflow_chord_celery.py"
    out = subprocess.run(
        [python, "-P", str(script), "--n", str(n)], capture_output=True, text=True, check=True
    )
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
    row: dict[str, Any] = json.loads(line)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--systems", default="lexigram-redis,lexigram-postgres,celery-redis")
    parser.add_argument("--celery-python", default=os.environ.get("CELERY_PYTHON", ""))
    args = parser.parse_args()
    systems = args.systems.split(",")
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    for _ in range(args.repeat):
        for system in systems:
            if system == "celery-redis":
                if not args.celery_python:
                    sys.exit("celery-redis needs --celery-python (see the module docstring)")
                row = measure_celery(args.celery_python, args.n)
            else:
                row = asyncio.run(measure_lexigram(system, args.n))
            print(json.dumps(row), flush=True)
            rows[system].append(row)
    print("\n| system | n | median seconds (enqueue to callback) | runs |\n|---|---|---|---|")
    medians = {}
    for system, found in rows.items():
        medians[system] = statistics.median(r["seconds"] for r in found)
        runs = ", ".join(f"{r['seconds']:.3f}" for r in found)
        print(f"| {system} | {args.n} | {medians[system]:.3f} | {runs} |")
    if "celery-redis" in medians and "lexigram-redis" in medians:
        ratio = medians["celery-redis"] / medians["lexigram-redis"]
        print(f"\nlexigram-redis is {ratio:.1f}x faster than celery-redis")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_worker":
        asyncio.run(worker(sys.argv[2]))
    else:
        main()
