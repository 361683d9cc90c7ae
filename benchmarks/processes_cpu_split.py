"""Where the CPU of a no-op drain on Redis goes, with one worker process or several.

    python benchmarks/processes_cpu_split.py PROCESSES [N]

Enqueues N jobs (default 20,000) that each INCR a counter, as the harness's jobs
do, then runs ``lexigram-tasks worker --processes PROCESSES -c 50`` and reports,
from the first completion to the last: jobs/s, the CPU per job of the worker
processes and of redis-server, each process's share of a core, and how much of
the machine was idle (other work on a shared host shows there), then what the
server ran per job (``INFO commandstats``: calls and microseconds of each command;
the commands a script runs are counted both on their own lines and in its
EVALSHA's time). Uses Redis databases 11 (queue) and 12 (counter) on 127.0.0.1,
flushed before and after (``PROCS_QUEUE_URL`` / ``PROCS_COUNTER_URL`` to change
them: a private ``redis-server --port N`` keeps other clients' commands out of
the figures). Needs psutil.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time

import psutil
import redis

from lexigram.tasks import TaskProvider
from lexigram.tasks.redis import RedisTaskQueue

QUEUE_URL = os.environ.get("PROCS_QUEUE_URL", "redis://127.0.0.1:6379/11")
COUNTER_URL = os.environ.get("PROCS_COUNTER_URL", "redis://127.0.0.1:6379/12")
COUNTER = "procs:count"

provider = TaskProvider(queue=RedisTaskQueue(redis_url=QUEUE_URL, queue_name="procs"))
_client: list[object] = []


@provider.task(name="noop")
async def noop() -> None:
    import redis.asyncio as aioredis

    if not _client:
        _client.append(aioredis.Redis.from_url(COUNTER_URL))
    await _client[0].incr(COUNTER)  # type: ignore[attr-defined]


def cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def fill(n: int) -> None:
    await provider.connect()
    for start in range(0, n, 1000):
        await provider.enqueue_many([noop.job() for _ in range(min(1000, n - start))])
    await provider.disconnect()


def main(processes: str, n: int) -> None:
    counter, queue_db = redis.Redis.from_url(COUNTER_URL), redis.Redis.from_url(QUEUE_URL)
    queue_db.flushdb()
    counter.flushdb()
    asyncio.run(fill(n))
    server = psutil.Process(int(queue_db.info("server")["process_id"]))
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "lexigram.tasks.cli", "worker", "processes_cpu_split"]
    command += ["--processes", processes, "-c", "50", "--log-level", "warning"]
    worker = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        root = psutil.Process(worker.pid)
        while int(counter.get(COUNTER) or 0) < 1:
            time.sleep(0.005)
        started, server_before, idle_before = time.monotonic(), cpu(server), psutil.cpu_times()
        server_system_before = server.cpu_times().system
        stats_before = queue_db.info("commandstats")
        tree = [root, *root.children()]
        before = {p.pid: cpu(p) for p in tree}
        while int(counter.get(COUNTER) or 0) < n:
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        spent = {p.pid: cpu(p) - before[p.pid] for p in tree}
        server_spent = cpu(server) - server_before
        server_system = server.cpu_times().system - server_system_before
        stats = commands_per_job(stats_before, queue_db.info("commandstats"), n)
        idle = (psutil.cpu_times().idle - idle_before.idle) / elapsed
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        queue_db.flushdb()
        counter.flushdb()
    shares = " ".join(
        f"{'supervisor' if p.pid == worker.pid and processes != '1' else 'worker'} "
        f"{100 * spent[p.pid] / elapsed:.0f}%"
        for p in tree
    )
    print(
        f"processes {processes}: {n / elapsed:,.0f} jobs/s; CPU per job: workers "
        f"{1e6 * sum(spent.values()) / n:.0f} us, redis-server {1e6 * server_spent / n:.0f} us "
        f"({1e6 * server_system / n:.0f} in the kernel); "
        f"share of a core: {shares}, redis-server {100 * server_spent / elapsed:.0f}%; "
        f"idle {idle:.2f} of {psutil.cpu_count()} cores"
    )
    print("per job: " + ", ".join(stats))


def commands_per_job(before: dict, after: dict, n: int) -> list[str]:
    """Each command's calls and microseconds per job between two ``INFO commandstats``."""
    rows = []
    for name, now in after.items():
        old = before.get(name, {"calls": 0, "usec": 0})
        calls, usec = now["calls"] - old["calls"], now["usec"] - old["usec"]
        if calls:
            rows.append(
                (usec, f"{name.removeprefix('cmdstat_')} {calls / n:.2f}x {usec / n:.1f}us")
            )
    return [text for _, text in sorted(rows, reverse=True)]


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20000)
