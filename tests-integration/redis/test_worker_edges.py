"""The worker at the edges on a real backend: acks at stop, ``def`` jobs at shutdown,
a job that kills its worker.

The scenarios take a backend spec (``{"type": ..., "options": {...}}``), so other
backends run them too: ``postgres/test_worker_edges.py`` loads this file. Run as a
script, this file is the worker process the scenarios start and SIGTERM or see die:

    python test_worker_edges.py SPEC_JSON LOG_PATH WORKER_COUNT LEASE SHUTDOWN_TIMEOUT

Its tasks append ``event key`` lines to LOG_PATH, so a test can tell how often
each job started and finished across worker lives.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from lexigram.tasks import Job, TaskBackendRegistry, TaskProvider, WorkerPool
from lexigram.tasks.protocol import TaskQueueProtocol
from lexigram.tasks.task import EnqueueOptions

THIS_FILE = Path(__file__).resolve()


def make_queue(spec: dict[str, Any]) -> TaskQueueProtocol:
    return TaskBackendRegistry.default().create(spec["type"], **spec["options"])


def _job(provider: TaskProvider, task: str, *args: Any) -> Job:
    return provider.build_job(task, args, {}, EnqueueOptions())


def _log(path: str, event: str, key: str) -> None:
    with open(path, "a") as log:  # one short line per write: O_APPEND keeps lines whole
        log.write(f"{event} {key}\n")


def read_log(path: Path) -> Counter[tuple[str, str]]:
    if not path.exists():
        return Counter()
    return Counter(tuple(line.split(" ", 1)) for line in path.read_text().splitlines())  # type: ignore[misc]


def _worker_main(argv: list[str]) -> None:
    spec, log_path = json.loads(argv[0]), argv[1]
    provider = TaskProvider(
        queue=make_queue(spec),
        worker_count=int(argv[2]),
        lease_seconds=float(argv[3]),
        shutdown_timeout=float(argv[4]),
        poll_interval=0.2,
    )

    @provider.task(name="slow_sync")
    def slow_sync(key: str, seconds: float) -> None:
        _log(log_path, "start", key)
        time.sleep(seconds)
        _log(log_path, "done", key)

    @provider.task(name="innocent")
    async def innocent(key: str) -> None:
        _log(log_path, "start", key)
        await asyncio.sleep(0.8)  # still running when a killer leased with it strikes
        _log(log_path, "done", key)

    @provider.task(name="killer")
    async def killer(key: str) -> None:
        _log(log_path, "start", key)
        await asyncio.sleep(0.3)  # the innocents leased with it are running meanwhile
        os._exit(1)

    provider.run()


class WorkerProcesses:
    """Worker processes running this file; whatever still runs at the end is killed."""

    def __init__(self, spec: dict[str, Any], log: Path) -> None:
        self.spec = spec
        self.log = log
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, *, worker_count: int, lease_seconds: float = 30.0, shutdown_timeout: float = 30.0
    ) -> subprocess.Popen[bytes]:
        args = [json.dumps(self.spec), str(self.log), str(worker_count)]
        args += [str(lease_seconds), str(shutdown_timeout)]
        process = subprocess.Popen([sys.executable, str(THIS_FILE), *args])
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


async def wait_for(predicate: Any, timeout: float, message: str) -> None:
    """Poll ``predicate()`` (sync or async) until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {message}"
        await asyncio.sleep(0.05)


async def _exited(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The exit code, or None if the process still runs after ``timeout`` seconds."""
    try:
        return await asyncio.to_thread(process.wait, timeout)
    except subprocess.TimeoutExpired:
        return None


# -- scenarios ------------------------------------------------------------------------------


async def check_jobs_finished_at_stop_are_acked(queue: TaskQueueProtocol) -> None:
    """8 jobs finish while stop() runs: every one is acked, none is delivered again."""
    provider = TaskProvider(queue=queue)
    release = asyncio.Event()
    started: list[int] = []

    @provider.task(name="together")
    async def together(n: int) -> None:
        started.append(n)
        await release.wait()

    await queue.enqueue_many([together.job(n) for n in range(8)])
    pool = WorkerPool(queue, provider.tasks, worker_count=8, lease_seconds=30)
    await pool.start()
    await wait_for(lambda: len(started) == 8, 10, "8 jobs running")
    stopping = asyncio.create_task(pool.stop())
    await asyncio.sleep(0)  # stop() is waiting for the running jobs when they finish
    release.set()
    await stopping
    counts = await queue.counts()
    assert (counts.ready, counts.delayed, counts.running, counts.failed) == (0, 0, 0, 0)
    assert await queue.dequeue(max_jobs=8, lease_seconds=5, wait=0.5) == []
    assert sorted(started) == list(range(8))


async def check_sync_jobs_do_not_hold_the_process_past_its_shutdown_window(
    spec: dict[str, Any], queue: TaskQueueProtocol, tmp_path: Path
) -> None:
    """SIGTERM with 8 ``def`` jobs running and a 0.5 s window: the process exits without
    waiting for their threads, and each job runs again later exactly once."""
    log = tmp_path / "sync.log"
    workers = WorkerProcesses(spec, log)
    provider = TaskProvider(queue=queue, strict=False)
    job_seconds = 6.0
    keys = [f"job{n}" for n in range(8)]
    try:
        await queue.enqueue_many([_job(provider, "slow_sync", k, job_seconds) for k in keys])
        first = workers.start(worker_count=8, shutdown_timeout=0.5)
        await wait_for(lambda: sum(read_log(log).values()) == 8, 20, "8 jobs started")
        first.send_signal(signal.SIGTERM)
        # Waiting for the threads would take job_seconds; the window is 0.5 s.
        code = await _exited(first, job_seconds / 2)
        assert code is not None, "the worker waited for its threads past the shutdown window"
        assert code == 0
        assert not any(event == "done" for event, _ in read_log(log))
        counts = await queue.counts()
        assert (counts.ready, counts.running) == (8, 0), "the 8 jobs were not returned"
        # The next worker runs each job once, to the end.
        second = workers.start(worker_count=8, shutdown_timeout=job_seconds * 2)
        done = lambda: [k for (event, k) in read_log(log) if event == "done"]  # noqa: E731
        await wait_for(lambda: len(done()) == 8, job_seconds * 4, "8 jobs done")
        second.send_signal(signal.SIGTERM)
        assert await _exited(second, 10) == 0
        runs = read_log(log)
        assert all(runs["start", k] == 2 and runs["done", k] == 1 for k in keys), runs
        counts = await queue.counts()
        assert (counts.pending, counts.failed) == (0, 0)
    finally:
        workers.close()


async def check_a_job_that_kills_its_worker_pays_alone(
    spec: dict[str, Any], queue: TaskQueueProtocol, tmp_path: Path
) -> None:
    """A job calls os._exit(1) while innocents leased in the same batch run: restarted
    until the job is dead-lettered (LeaseExpired), the worker runs every innocent once."""
    log = tmp_path / "kill.log"
    workers = WorkerProcesses(spec, log)
    provider = TaskProvider(queue=queue, strict=False)
    innocents = [f"innocent{n}" for n in range(12)]
    jobs = [_job(provider, "innocent", k) for k in innocents]
    jobs.insert(2, _job(provider, "killer", "killer"))
    lives = 0
    try:
        await queue.enqueue_many(jobs)

        async def settled() -> bool:
            runs = read_log(log)
            return bool(await queue.dead_letters()) and all(runs["done", k] for k in innocents)

        while not await settled():
            assert lives < 8, f"still not settled after {lives} worker lives: {read_log(log)}"
            process = workers.start(worker_count=4, lease_seconds=1.0, shutdown_timeout=5)
            lives += 1

            async def died_or_settled(process: subprocess.Popen[bytes] = process) -> bool:
                return process.poll() is not None or await settled()

            await wait_for(died_or_settled, 60, "the worker neither died nor settled")
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                assert await _exited(process, 10) == 0
            else:
                assert process.returncode == 1  # os._exit(1): the killer ran
        [letter] = await queue.dead_letters()
        assert letter.reason.startswith("LeaseExpired: gave up after 3 attempt(s)"), letter
        runs = read_log(log)
        assert runs["start", "killer"] == 3  # one run, then lost_lease_retries=2 runs alone
        assert {k: runs["done", k] for k in innocents} == dict.fromkeys(innocents, 1)
        counts = await queue.counts()
        assert (counts.pending, counts.failed) == (0, 1)
    finally:
        workers.close()


# -- on Redis ------------------------------------------------------------------------------


@pytest.fixture
def redis_spec(redis_url: str) -> dict[str, Any]:
    name = f"lxedges-{uuid.uuid4().hex[:10]}"
    return {"type": "redis", "options": {"redis_url": redis_url, "queue_name": name}}


@pytest_asyncio.fixture
async def redis_queue(redis_spec: dict[str, Any]) -> AsyncIterator[TaskQueueProtocol]:
    queue = make_queue(redis_spec)
    async with queue:
        try:
            yield queue
        finally:
            await queue.purge()  # type: ignore[attr-defined]


async def test_jobs_finished_at_stop_are_acked(redis_queue: TaskQueueProtocol) -> None:
    await check_jobs_finished_at_stop_are_acked(redis_queue)


async def test_sync_jobs_do_not_hold_the_process_past_its_shutdown_window(
    redis_spec: dict[str, Any], redis_queue: TaskQueueProtocol, tmp_path: Path
) -> None:
    await check_sync_jobs_do_not_hold_the_process_past_its_shutdown_window(
        redis_spec, redis_queue, tmp_path
    )


async def test_a_job_that_kills_its_worker_pays_alone(
    redis_spec: dict[str, Any], redis_queue: TaskQueueProtocol, tmp_path: Path
) -> None:
    await check_a_job_that_kills_its_worker_pays_alone(redis_spec, redis_queue, tmp_path)


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
