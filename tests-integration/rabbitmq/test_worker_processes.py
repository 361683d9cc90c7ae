"""A real worker process whose RabbitMQ connection is closed under it. Sharing a queue,
SIGKILL and tracing are in the worker contract (test_contract.py)."""

from __future__ import annotations

from typing import Any

from lexigram.tasks.job import Job
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.testing import EventLog, WorkerProcesses, eventually

EMPTY = QueueCounts(ready=0, delayed=0, running=0, failed=0)


def _overlaps(log: EventLog) -> list[str]:
    """Keys of jobs that started again while an earlier run of theirs was still going."""
    running: set[str] = set()
    overlaps = []
    for line in log.lines():
        if line.event == "start":
            if line.key in running:
                overlaps.append(line.key)
            running.add(line.key)
        elif line.event == "done":
            running.discard(line.key)
    return overlaps


async def _is(awaitable: Any, expected: object) -> bool:
    return bool(await awaitable == expected)


async def test_closed_connection_loses_no_job_and_runs_none_twice_at_once(
    queue: RabbitMQTaskQueue, ns: str, workers: WorkerProcesses, broker: Any
) -> None:
    worker = workers.start(worker_count=20)
    [pid] = await eventually(lambda: broker.connection_pids(ns), timeout=30)
    total = 100
    # Runs of 3 s: rabbitmqctl can take seconds to start on a loaded machine, and jobs
    # running when it closes the connection must still be running when it returns.
    jobs = [Job(task="slow", args=[f"k{i}", 3.0], queue=queue.queue_name) for i in range(total)]
    await queue.enqueue_many(jobs)
    await eventually(lambda: len(workers.log.count("start")) >= 30, timeout=30)

    await broker.rabbitmqctl("close_connection", pid, "closed by a lexigram test")
    started, done = workers.log.count("start"), workers.log.count("done")
    running = len(started) - len(done)
    assert running > 0, "the connection should close while jobs run"
    assert total - len(done) > running, "the connection should close while jobs wait"

    # The worker reconnects (a new connection under the same name) and carries on.
    await eventually(lambda: _reconnected(broker, ns, pid), timeout=30)
    await eventually(lambda: len(workers.log.count("done")) == total, timeout=60)
    assert set(workers.log.count("done").values()) == {1}, "a job completed twice"
    assert _overlaps(workers.log) == [], "a job ran twice at once"
    await eventually(lambda: _is(queue.counts(), EMPTY), timeout=10)
    await workers.stop(worker)
    assert set(workers.log.count("done").values()) == {1}


async def _reconnected(broker: Any, name: str, old_pid: str) -> bool:
    pids = await broker.connection_pids(name)
    return bool(pids) and old_pid not in pids
