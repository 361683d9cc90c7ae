"""The limit tests shared by the Redis and PostgreSQL suites (not a test module)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from lexigram.tasks.job import Job
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.testing import EventLog, eventually

APP = Path(__file__).with_name("limits_app.py")


async def fairness(queue: Any, workers: int = 10, registered: bool = False) -> None:
    """Tenant A's 10,000 jobs, then tenant B's 10: B's all start before A's backlog is 10% done.

    ``registered``: enqueued through the task (on Redis, the lease takes their slots).
    """
    provider = TaskProvider(queue=queue, worker_count=workers, poll_interval=0.2)
    a_done = 0
    b_started_after: list[int] = []  # A's jobs done when each of B's jobs started

    @provider.task(
        name=f"{queue.queue_name}.fair",
        concurrency_key=lambda tenant, **_: tenant,
        max_concurrency_per_key=2,
    )
    async def fair(tenant: str, n: int) -> None:
        nonlocal a_done
        if tenant == "B":
            b_started_after.append(a_done)
        # ~25 of A's jobs a second (2 at once): B must get past A's backlog meanwhile.
        # Reaching B costs the worker CPU (fetching and putting back A's jobs), A's runs
        # do not, so the margin shrinks on a slow machine: at 20 ms a job, B came after
        # 750-1,800 of A's jobs on a VM whose CPU ran at half its usual speed.
        await asyncio.sleep(0.08 + (n % 6) / 1000)
        if tenant == "A":
            a_done += 1

    def jobs(tenant: str, numbers: range) -> list[Job]:
        if registered:
            return [fair.job(tenant, n) for n in numbers]
        return [Job(task=fair.name, args=[tenant, n]) for n in numbers]

    async with provider:
        for start in range(0, 10_000, 1000):
            await queue.enqueue_many(jobs("A", range(start, start + 1000)))
        await queue.enqueue_many(jobs("B", range(10)))
        await eventually(lambda: len(b_started_after) == 10, timeout=120)
    await queue.connect()  # the provider closed it; the fixture purges it
    assert max(b_started_after) < 1000, b_started_after


class Workers:
    """``limits_app.py`` processes on one queue, all killed at the end."""

    def __init__(self, backend: str, url: str, queue: str, schema: str, directory: Path) -> None:
        self.args = [backend, url, queue, schema]
        self.log = EventLog(directory / "events.log")
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, worker_count: int = 10, lease_seconds: float = 30.0) -> subprocess.Popen[bytes]:
        command = [sys.executable, str(APP), *self.args, str(self.log.path)]
        command += [str(worker_count), str(lease_seconds)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        process = subprocess.Popen(command, env=env)
        self.processes.append(process)
        return process

    async def ready(self, count: int) -> None:
        await eventually(lambda: self.log.count("ready")["worker"] >= count, timeout=60)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()


def most_at_once(log: EventLog) -> Counter[str]:
    """The most runs of each tenant in progress at once, from the log's start/end lines."""
    now: Counter[str] = Counter()
    most: Counter[str] = Counter()
    for line in log.lines():
        tenant = line.key.split(":")[0]
        if line.event == "start":
            now[tenant] += 1
            most[tenant] = max(most[tenant], now[tenant])
        elif line.event == "end":
            now[tenant] -= 1
    return most


def jobs_of(queue: Any, name: str, argses: list[list[Any]], registered: bool) -> list[Job]:
    """Jobs of ``name`` as a producer builds them: with the task ``registered`` (through
    its ``job()``; on Redis these name their slots, which the lease then takes), or by
    name alone."""
    if not registered:
        return [Job(task=name, args=args) for args in argses]
    import limits_app

    provider = TaskProvider(queue=queue)
    limits_app.register(provider, queue.queue_name, EventLog(os.devnull))
    return [provider.tasks[name].job(*args) for args in argses]


async def limit_across_processes(queue: Any, workers: Workers, registered: bool = False) -> None:
    """Two worker processes never run more than max_concurrency_per_key of a key at once."""
    workers.start()
    workers.start()
    await workers.ready(2)
    name = f"{queue.queue_name}.tenant"
    argses: list[list[Any]] = [[t, n, 0.03] for n in range(60) for t in ("t", "u")]
    await queue.enqueue_many(jobs_of(queue, name, argses, registered))
    await eventually(lambda: len(workers.log.count("end")) == 120, timeout=120)
    assert most_at_once(workers.log) == {"t": 2, "u": 2}
    assert len(workers.log.pids("start")) == 2, "both processes should have run jobs"


async def killed_worker_frees_its_slot(
    queue: Any, workers: Workers, registered: bool = False
) -> None:
    """A SIGKILLed worker's slot frees once its lease lapses: the next job of the task runs."""
    first = workers.start(lease_seconds=2.0)
    await workers.ready(1)
    name = f"{queue.queue_name}.hang"  # max_concurrency=1
    [h1, h2] = jobs_of(queue, name, [["h1", 3600.0], ["h2", 0.0]], registered)
    await queue.enqueue(h1)
    await eventually(lambda: workers.log.count("start")["h1"] == 1, timeout=30)
    first.send_signal(signal.SIGKILL)
    first.wait()
    await queue.enqueue(h2)
    workers.start(lease_seconds=2.0)
    await workers.ready(2)
    # Both need the slot h1's dead worker held (h1 comes back with its lost lease
    # and, on its second run, does not hang).
    await eventually(lambda: workers.log.count("end")["h2"] == 1, timeout=60)
    await eventually(lambda: workers.log.count("end")["h1"] == 1, timeout=60)
