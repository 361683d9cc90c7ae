"""``lexigram-tasks worker --processes N`` against a real Redis: the supervisor's
workers share the queue, a worker killed with SIGKILL is started again and loses
no job, SIGTERM stops everything cleanly, and a crash loop ends in a loud exit."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from lexigram.tasks import QueueCounts, TaskProvider
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.testing import eventually

sys.path.insert(0, str(Path(__file__).parent))
from cli_process import COMMAND, Running

APP = """
import asyncio
import contextlib
import os
import time

import redis.asyncio as aioredis

from lexigram.tasks import QueueCounts, TaskProvider
from lexigram.tasks.redis import RedisTaskQueue

URL, QUEUE = os.environ["APP_REDIS_URL"], os.environ["QUEUE"]
_client = []


def client():
    if not _client:
        _client.append(aioredis.Redis.from_url(URL))
    return _client[0]


async def record(n: int, seconds: float = 0.0) -> None:
    await client().sadd(QUEUE + ":started", n)
    if seconds:
        await asyncio.sleep(seconds)
    async with client().pipeline(transaction=False) as pipe:
        pipe.sadd(QUEUE + ":done", n)
        pipe.hincrby(QUEUE + ":pids", os.getpid(), 1)
        await pipe.execute()


async def block() -> None:
    await client().sadd(QUEUE + ":started", "block")
    time.sleep(120)  # holds the event loop: this worker cannot stop


def register_tasks(provider):
    provider.task(name="record")(record)
    provider.task(name="block")(block)


provider = TaskProvider(queue=RedisTaskQueue(redis_url=URL, queue_name=QUEUE))
register_tasks(provider)
"""

# Imports once: the first import (the supervisor's) succeeds, every later one (the
# workers') fails, as after a deploy that broke the code under a running supervisor.
BROKEN_LATER = """
import os
from pathlib import Path

from lexigram.tasks import QueueCounts, TaskProvider
from lexigram.tasks.redis import RedisTaskQueue

_marker = Path(__file__).with_suffix(".imported")
if _marker.exists():
    raise ImportError("cannot import name 'helper' (the code changed on disk)")
_marker.write_text("")

provider = TaskProvider(
    queue=RedisTaskQueue(redis_url=os.environ["APP_REDIS_URL"], queue_name=os.environ["QUEUE"])
)


@provider.task(name="record")
async def record(n: int) -> None:
    pass
"""

CONFIG = """
tasks:
  backend:
    type: redis
    redis_url: "${APP_REDIS_URL}"
    queue_name: "${QUEUE}"
  worker:
    processes: 2
    worker_count: 5
    shutdown_timeout: 10
"""


@pytest.fixture
def queue_name() -> str:
    return f"lxsup-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis(redis_url: str, queue_name: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.delete(*(f"{queue_name}:{key}" for key in ("started", "done", "pids")))
    await client.aclose()


@pytest.fixture
async def provider(redis_url: str, queue_name: str) -> AsyncIterator[TaskProvider]:
    """The producer side: the same task names, to enqueue; the queue is purged afterwards."""
    queue = RedisTaskQueue(redis_url=redis_url, queue_name=queue_name)
    producer = TaskProvider(queue=queue)

    @producer.task(name="record")
    async def record(n: int, seconds: float = 0.0) -> None: ...

    @producer.task(name="block")
    async def block() -> None: ...

    await producer.connect()
    yield producer
    await queue.purge()
    await producer.disconnect()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "broken_later.py").write_text(BROKEN_LATER)
    (tmp_path / "lexigram.yaml").write_text(CONFIG)
    return tmp_path


@pytest.fixture
def env(redis_url: str, queue_name: str) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("LEXIGRAM_TASKS_")}
    values.update(APP_REDIS_URL=redis_url, QUEUE=queue_name, PYTHONUNBUFFERED="1")
    return values


@pytest.fixture
def supervisors() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for running in started:
        running.close()


async def enqueue(provider: TaskProvider, count: int, seconds: float) -> None:
    record = provider.tasks["record"]
    for start in range(0, count, 1000):
        jobs = [record.job(n, seconds) for n in range(start, min(count, start + 1000))]
        await provider.enqueue_many(jobs)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(120)
@pytest.mark.parametrize("to_group", [False, True], ids=["supervisor", "process-group"])
async def test_two_workers_share_the_queue_and_sigterm_exits_0(
    to_group: bool,
    app_dir: Path,
    env: dict[str, str],
    provider: TaskProvider,
    redis: aioredis.Redis,
    queue_name: str,
    supervisors: list[Running],
) -> None:
    running = Running(
        ["app:provider", "--processes", "2", "-c", "10"], app_dir, env, group=to_group
    )
    supervisors.append(running)
    await running.workers_ready(2)
    await enqueue(provider, 300, 0.01)
    done = f"{queue_name}:done"
    await eventually(reaches(lambda: redis.scard(done), 300), 60, message="300 jobs did not finish")
    pids = {int(pid): int(n) for pid, n in (await redis.hgetall(f"{queue_name}:pids")).items()}
    children = set(running.started().values())
    assert len(children) == 2 and running.process.pid not in children
    assert set(pids) == children, (pids, children)  # both ran jobs; the supervisor ran none
    assert sum(pids.values()) == 300

    if to_group:  # as Ctrl-C in a terminal, or systemd: every process gets the signal
        os.killpg(running.process.pid, signal.SIGTERM)
    else:
        running.process.send_signal(signal.SIGTERM)
    assert await running.exit_code(60) == 0, running.output
    assert "second SIGTERM" not in running.output  # the signal and the pipe are one request
    assert running.output.count("worker stopped after") == 2
    assert "supervisor stopped (exit status 0)" in running.output
    assert not any(alive(pid) for pid in children)


def reaches(read: Callable[[], Awaitable[int]], wanted: int) -> Callable[[], Awaitable[bool]]:
    """A condition for ``eventually``: ``read()`` returns ``wanted``."""

    async def check() -> bool:
        return int(await read()) == wanted

    return check


@pytest.mark.timeout(240)
async def test_a_worker_killed_mid_run_is_started_again_and_no_job_is_lost(
    app_dir: Path,
    env: dict[str, str],
    provider: TaskProvider,
    redis: aioredis.Redis,
    queue_name: str,
    supervisors: list[Running],
) -> None:
    args = ["app:provider", "--processes", "2", "-c", "5", "--lease-seconds", "2"]
    running = Running(args, app_dir, env)
    supervisors.append(running)
    await running.workers_ready(2)
    await enqueue(provider, 3000, 0.02)  # 10 slots: at most 500 jobs/s, a run of 6 s or more
    done = f"{queue_name}:done"

    async def some_done() -> bool:
        return int(await redis.scard(done)) >= 500

    await eventually(some_done, 120, message="500 jobs did not finish")
    number, victim = sorted(running.started().items())[0]
    os.kill(victim, signal.SIGKILL)

    await eventually(
        lambda: running.started()[number] != victim,
        60,
        message=f"the killed worker was not started again:\n{running.output}",
    )
    assert f"worker {number} (pid {victim}) killed by SIGKILL" in running.output
    await eventually(
        reaches(lambda: redis.scard(done), 3000),
        180,
        message="not every job finished after the kill",
    )
    counts = await eventually(settled(provider), 60)
    assert counts.failed == 0  # nothing dead-lettered: the killed worker's jobs ran again
    pids = {int(pid) for pid in await redis.hkeys(f"{queue_name}:pids")}
    assert running.started()[number] in pids  # the new worker took part

    running.process.send_signal(signal.SIGTERM)
    assert await running.exit_code(60) == 0, running.output


def settled(provider: TaskProvider) -> Callable[[], Awaitable[QueueCounts | None]]:
    """A condition for ``eventually``: the counts once nothing is ready, delayed or running."""

    async def read() -> QueueCounts | None:
        counts = (await provider.counts())["default"]
        return counts if counts.ready == counts.running == counts.delayed == 0 else None

    return read


@pytest.mark.timeout(120)
async def test_sigterm_mid_run_leaves_no_job_running_or_lost(
    app_dir: Path,
    env: dict[str, str],
    provider: TaskProvider,
    redis: aioredis.Redis,
    queue_name: str,
    supervisors: list[Running],
) -> None:
    # processes: 2, worker_count: 5 and shutdown_timeout: 10 come from lexigram.yaml
    running = Running(["--config", "lexigram.yaml", "--tasks-module", "app"], app_dir, env)
    supervisors.append(running)
    await running.workers_ready(2)
    await enqueue(provider, 60, 0.3)

    async def some_done() -> bool:
        return int(await redis.scard(f"{queue_name}:done")) >= 10

    await eventually(some_done, 60, message="10 jobs did not finish")
    running.process.send_signal(signal.SIGTERM)
    assert await running.exit_code(60) == 0, running.output
    assert running.output.count("the supervisor asks it to stop") == 2

    counts = (await provider.counts())["default"]
    assert counts.running == counts.delayed == counts.failed == 0
    started = {int(n) for n in await redis.smembers(f"{queue_name}:started")}
    finished = {int(n) for n in await redis.smembers(f"{queue_name}:done")}
    assert started == finished  # every job started was let finish (0.3 s < shutdown_timeout)
    assert len(finished) + counts.ready == 60  # the rest is back in the queue


@pytest.mark.timeout(120)
async def test_a_crash_loop_makes_the_supervisor_give_up_loudly(
    app_dir: Path, env: dict[str, str], supervisors: list[Running]
) -> None:
    running = Running(["broken_later:provider", "--processes", "2"], app_dir, env)
    supervisors.append(running)
    code = await running.exit_code(90)
    assert code == 1, running.output
    [gave_up] = [line for line in running.lines if "giving up" in line and "error:" in line]
    assert re.search(r"worker \d \(last pid \d+\) died 5 times in a row", gave_up), gave_up
    assert "(exited with code 3, exited with code 3, " in gave_up  # the workers' exit codes
    assert "cannot import name 'helper'" in running.output  # each worker's own error line
    assert "supervisor stopped (exit status 1)" in running.output
    assert not any(alive(pid) for pid in running.started().values())


@pytest.mark.timeout(120)
async def test_a_worker_that_cannot_stop_is_killed_and_named(
    app_dir: Path,
    env: dict[str, str],
    provider: TaskProvider,
    redis: aioredis.Redis,
    queue_name: str,
    supervisors: list[Running],
) -> None:
    args = ["app:provider", "--processes", "2", "--shutdown-timeout", "1"]
    running = Running(args, app_dir, env)
    supervisors.append(running)
    await running.workers_ready(2)
    await provider.tasks["block"].enqueue()
    await eventually(
        lambda: redis.sismember(f"{queue_name}:started", "block"), 30, message="block not run"
    )
    running.process.send_signal(signal.SIGTERM)
    assert await running.exit_code(60) == 1, running.output
    [error] = [line for line in running.lines if line.startswith("error:")]
    assert re.search(r"worker \d \(pid \d+\) was still running 11s after the stop", error), error
    assert "killed" in error
    assert not any(alive(pid) for pid in running.started().values())


def test_the_memory_backend_is_refused_with_several_processes(tmp_path: Path) -> None:
    (tmp_path / "memapp.py").write_text(
        "from lexigram.tasks import MemoryTaskQueue, TaskProvider\n"
        "provider = TaskProvider(queue=MemoryTaskQueue())\n"
        "provider.task(name='noop')(lambda: None)\n"
    )
    result = subprocess.run(
        [*COMMAND, "memapp:provider", "--processes", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    assert "MemoryTaskQueue, which lives inside one process" in result.stderr


@pytest.mark.timeout(120)
async def test_a_second_signal_kills_the_workers_at_once(
    app_dir: Path,
    env: dict[str, str],
    provider: TaskProvider,
    redis: aioredis.Redis,
    queue_name: str,
    supervisors: list[Running],
) -> None:
    running = Running(["app:provider", "--processes", "2"], app_dir, env)
    supervisors.append(running)
    await running.workers_ready(2)
    await provider.tasks["block"].enqueue()
    await eventually(
        lambda: redis.sismember(f"{queue_name}:started", "block"), 30, message="block not run"
    )
    running.process.send_signal(signal.SIGTERM)
    await eventually(
        lambda: "SIGTERM received: stopping 2 worker process(es)" in running.output,
        30,
        message=running.output,
    )
    running.process.send_signal(signal.SIGTERM)
    assert await running.exit_code(20) == 128 + signal.SIGTERM, running.output
    assert "second SIGTERM: killing the worker processes" in running.output
    assert not any(alive(pid) for pid in running.started().values())
