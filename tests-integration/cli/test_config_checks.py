"""Configuration checks with the real backend packages and servers: URL schemes found at
load time (exit 3, not 4), max_job_bytes through the provider and the YAML file, a worker
without tasks that leaves the queue alone, ``enqueue --wait`` that enqueues nothing it
could not wait for."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lexigram.tasks import JobTooLargeError, TaskProvider
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.redis import RedisTaskQueue

pytestmark = pytest.mark.timeout(60)

COMMAND = [sys.executable, "-m", "lexigram.tasks.cli"]


@pytest.fixture
def queue(redis_url: str) -> Iterator[RedisTaskQueue]:
    """A unique Redis queue, purged afterwards."""
    q = RedisTaskQueue(redis_url=redis_url, queue_name=f"lxcfg-{uuid.uuid4().hex[:10]}")
    yield q

    async def purge() -> None:
        async with q:
            await q.purge()

    asyncio.run(purge())


def cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("LEXIGRAM_TASKS_")}
    values.update(PYTHONUNBUFFERED="1", **env)
    return subprocess.run(
        [*COMMAND, *args], cwd=cwd, env=values, capture_output=True, text=True, timeout=30
    )


def ready(queue: RedisTaskQueue) -> int:
    async def count() -> int:
        async with queue:
            return (await queue.counts()).ready

    return asyncio.run(count())


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        (
            "type: redis\n    redis_url: ${URL}",
            "lexigram.yaml:4: tasks.backend.redis_url: 'http://:***@127.0.0.1:6379/0' is not a "
            "Redis URL: it must start with redis://, rediss://, unix://, redis+sentinel:// or "
            "rediss+sentinel://",
        ),
        (
            "type: rabbitmq\n    amqp_url: ${URL}",
            "lexigram.yaml:4: tasks.backend.amqp_url: 'http://:***@127.0.0.1:6379/0' is not a "
            "RabbitMQ URL: it must start with amqp:// or amqps://",
        ),
        (
            "type: postgres\n    postgres_dsn: ${URL}",
            "lexigram.yaml:4: tasks.backend.postgres_dsn: 'http://:***@127.0.0.1:6379/0' is not a "
            "PostgreSQL URL: it must start with postgres:// or postgresql://",
        ),
    ],
)
def test_a_bad_url_scheme_exits_3_naming_file_line_and_key(
    tmp_path: Path, backend: str, message: str
) -> None:
    (tmp_path / "lexigram.yaml").write_text(f"tasks:\n  backend:\n    {backend}\n")
    result = cli(tmp_path, "info", URL="http://:hunter2@127.0.0.1:6379/0")
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines() == [f"error: {message}"]
    assert "hunter2" not in result.stderr


async def test_max_job_bytes_of_the_provider_applies_to_redis(queue: RedisTaskQueue) -> None:
    provider = TaskProvider(queue=queue, max_job_bytes=4096)

    @provider.task(name="store")
    async def store(data: str) -> None: ...

    try:
        await store.enqueue("x" * 1000)
        with pytest.raises(JobTooLargeError, match=r"is 8,\d{3} bytes, over the limit of 4,096"):
            await store.enqueue("x" * 8000)
        with pytest.raises(JobTooLargeError):
            await provider.enqueue_many([store.job("a"), store.job("x" * 8000)])
        assert (await provider.counts())["default"].ready == 1
    finally:
        await provider.disconnect()


def test_max_job_bytes_from_the_file_refuses_a_big_enqueue(
    tmp_path: Path, redis_url: str, queue: RedisTaskQueue
) -> None:
    (tmp_path / "lexigram.yaml").write_text(
        "tasks:\n  backend:\n    type: redis\n    redis_url: ${URL}\n    queue_name: ${QUEUE}\n"
        "  max_job_bytes: 2048\n"
    )
    env = {"URL": redis_url, "QUEUE": queue.queue_name}
    big = cli(tmp_path, "enqueue", "any.task", "--args", json.dumps(["x" * 3000]), **env)
    assert big.returncode == 1, big.stderr
    assert "over the limit of 2,048 (max_job_bytes)" in big.stderr
    assert "is 3," in big.stderr
    small = cli(tmp_path, "enqueue", "any.task", "--args", '["x"]', **env)
    assert small.returncode == 0, small.stderr
    assert ready(queue) == 1


def test_a_worker_without_tasks_exits_3_and_leaves_the_jobs(
    tmp_path: Path, redis_url: str, queue: RedisTaskQueue
) -> None:
    """It used to start and dead-letter every ready job as an unknown task."""
    (tmp_path / "lexigram.yaml").write_text(
        "tasks:\n  backend:\n    type: redis\n    redis_url: ${URL}\n    queue_name: ${QUEUE}\n"
    )
    env = {"URL": redis_url, "QUEUE": queue.queue_name}
    sent = [cli(tmp_path, "enqueue", "myapp.report", **env) for _ in range(3)]
    assert all(s.returncode == 0 for s in sent), [s.stderr for s in sent]
    result = cli(tmp_path, "worker", **env)
    assert result.returncode == 3, result.stderr
    assert "no tasks are registered (config lexigram.yaml)" in result.stderr
    assert "--tasks-module MODULE[:FUNCTION]" in result.stderr
    assert "worker started" not in result.stderr
    counts = asyncio.run(_counts(queue))
    assert (counts.ready, counts.failed) == (3, 0)


async def _counts(queue: RedisTaskQueue) -> QueueCounts:
    async with queue:
        return await queue.counts()


def test_enqueue_wait_without_a_result_store_exits_3_and_enqueues_nothing(
    tmp_path: Path, redis_url: str, queue: RedisTaskQueue
) -> None:
    """It used to enqueue and then fail, so running it again doubled the job."""
    (tmp_path / "lexigram.yaml").write_text(
        "tasks:\n  backend:\n    type: redis\n    redis_url: ${URL}\n    queue_name: ${QUEUE}\n"
    )
    env = {"URL": redis_url, "QUEUE": queue.queue_name}
    for _ in range(2):  # the retry an operator would try
        result = cli(tmp_path, "enqueue", "myapp.report", "--wait", "5", **env)
        assert result.returncode == 3, result.stderr
        assert "--wait cannot get a result: the provider has no result store" in result.stderr
        assert "Nothing was enqueued" in result.stderr
        assert result.stdout == ""
    assert ready(queue) == 0
    with_store = tmp_path / "stored.yaml"
    with_store.write_text(
        (tmp_path / "lexigram.yaml").read_text()
        + "  result_store:\n    type: redis\n    redis_url: ${URL}\n"
    )
    waited = cli(
        tmp_path, "enqueue", "myapp.report", "--config", "stored.yaml", "--wait", "0.2", **env
    )
    assert waited.returncode == 1, waited.stderr  # no worker: the wait times out
    assert "no result for job" in waited.stderr and "within 0.2 seconds" in waited.stderr
    assert ready(queue) == 1  # with a result store the job is sent before waiting
