"""The CLI against a real Redis: a job interrupted by SIGTERM is back in the queue,
seen by another process, with no attempt used up."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lexigram.tasks import Job
from lexigram.tasks.redis import RedisTaskQueue

pytestmark = pytest.mark.timeout(60)

COMMAND = [sys.executable, "-m", "lexigram.tasks.cli"]

APP = """
import asyncio
import os

from lexigram.tasks import TaskProvider
from lexigram.tasks import Job
from lexigram.tasks.redis import RedisTaskQueue

provider = TaskProvider(
    queue=RedisTaskQueue(redis_url=os.environ["APP_REDIS_URL"], queue_name=os.environ["QUEUE"]),
    shutdown_timeout=0.3,
)


@provider.task(name="slow")
async def slow(seconds: float) -> None:
    print("slow started", flush=True)
    await asyncio.sleep(seconds)
"""

CONFIG = """
tasks:
  backend:
    type: redis
    redis_url: "${APP_REDIS_URL}"
    queue_name: "${QUEUE}"
  worker:
    worker_count: 2
"""


@pytest.fixture
def queue(redis_url: str) -> Iterator[RedisTaskQueue]:
    """A unique queue (the worker processes use it by name); purged afterwards."""
    q = RedisTaskQueue(redis_url=redis_url, queue_name=f"lxcli-{uuid.uuid4().hex[:10]}")
    yield q

    async def purge() -> None:
        async with q:
            await q.purge()

    asyncio.run(purge())


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "lexigram.yaml").write_text(CONFIG)
    return tmp_path


def env(redis_url: str, queue: RedisTaskQueue) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("LEXIGRAM_TASKS_")}
    values.update(APP_REDIS_URL=redis_url, QUEUE=queue.queue_name, PYTHONUNBUFFERED="1")
    return values


def cli(app_dir: Path, environment: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], cwd=app_dir, env=environment, capture_output=True, text=True, timeout=30
    )


def counts(app_dir: Path, environment: dict[str, str], *app: str) -> dict[str, int]:
    result = cli(app_dir, environment, "info", *app, "--json")
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)["backends"]
    return {k: row[k] for k in ("ready", "delayed", "running", "failed")}


def wait_until(predicate: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_sigterm_mid_job_puts_it_back_for_the_next_worker(
    app_dir: Path, redis_url: str, queue: RedisTaskQueue
) -> None:
    environment = env(redis_url, queue)
    sent = cli(app_dir, environment, "enqueue", "slow", "-A", "app", "--args", "[60]")
    assert sent.returncode == 0, sent.stderr
    job_id = sent.stdout.strip()
    assert counts(app_dir, environment, "app") == {
        "ready": 1,
        "delayed": 0,
        "running": 0,
        "failed": 0,
    }

    worker = subprocess.Popen(
        [*COMMAND, "worker", "app:provider"],
        cwd=app_dir,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(worker.stdout or []), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("slow started" in line for line in lines))
        started = next(line for line in lines if "worker started" in line)
        assert f"backend default (redis, queue '{queue.queue_name}'" in started
        # another process sees the job leased
        assert counts(app_dir, environment, "app")["running"] == 1
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(5)
        reader.join(5)
        if worker.stdout is not None:
            worker.stdout.close()
    output = "".join(lines)
    assert "returning 1 running job(s) to the queue" in output
    assert "worker stopped after 1 job(s)" in output

    # back in the queue, seen from a new process (through the config file this time)
    assert counts(app_dir, environment) == {"ready": 1, "delayed": 0, "running": 0, "failed": 0}

    async def take() -> Job | None:
        async with queue:
            [delivery] = await queue.dequeue(max_jobs=1, lease_seconds=5)
            await queue.ack(delivery)
            return delivery.job

    job = asyncio.run(take())
    assert job is not None and job.id == job_id
    assert job.attempt == 1  # the interrupted run did not use up an attempt


def test_unreachable_redis_is_one_line_and_exit_4(
    app_dir: Path, redis_url: str, queue: RedisTaskQueue
) -> None:
    environment = env(redis_url, queue)
    environment["APP_REDIS_URL"] = "redis://:hunter2@127.0.0.1:1/0"  # nothing listens on port 1
    result = cli(app_dir, environment, "worker", "app:provider")
    assert result.returncode == 4, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "redis://:***@127.0.0.1:1/0" in errors[0]
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
