"""``lexigram-tasks worker --metrics-port`` against a real Redis: a worker process
serves its counters for Prometheus while it runs jobs, and under a supervisor
(``--processes 2``, here from ``tasks.metrics`` and ``tasks.worker`` in the file)
the supervisor's port serves every worker process's series, labelled."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lexigram.tasks import TaskProvider
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.testing import eventually

pytestmark = pytest.mark.timeout(90)

sys.path.insert(0, str(Path(__file__).parent))
from cli_process import COMMAND  # noqa: E402
from cli_process import Running as Worker  # noqa: E402

APP = """
import asyncio
import os

from lexigram.tasks import TaskProvider
from lexigram.tasks.redis import RedisTaskQueue


def register_tasks(provider):
    @provider.task(name="send")
    async def send(n: int) -> None:
        await asyncio.sleep(0.02)

    @provider.task(name="bounce", max_retries=1, retry_backoff=0.01)
    async def bounce() -> None:
        raise ConnectionError("refused")

    @provider.task(name="fan_out")
    async def fan_out(count: int) -> None:
        for n in range(count):
            await send.enqueue(n)


provider = TaskProvider(
    queue=RedisTaskQueue(redis_url=os.environ["APP_REDIS_URL"], queue_name=os.environ["QUEUE"])
)
register_tasks(provider)
"""

CONFIG = """
tasks:
  backend:
    type: redis
    redis_url: "${APP_REDIS_URL}"
    queue_name: "${QUEUE}"
  worker:
    processes: 2
    worker_count: 2
    shutdown_timeout: 10
  metrics:
    port: ${METRICS_PORT}
"""


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports that are free now."""
    for _ in range(200):
        first = random.randrange(20000, 40000)
        if all(_free(first + i) for i in range(count)):
            return first
    raise AssertionError(f"found no {count} consecutive free ports")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def serving(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels without the scope ones) -> value, from one scrape."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset(
                (k, v) for k, v in sample.labels.items() if not k.startswith("otel_scope")
            )
            found[sample.name, labels] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and wanted <= ls)


@pytest.fixture
def queue_name() -> str:
    return f"lxmet-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def producer(redis_url: str, queue_name: str) -> AsyncIterator[TaskProvider]:
    queue = RedisTaskQueue(redis_url=redis_url, queue_name=queue_name)
    provider = TaskProvider(queue=queue)
    # The same names and retry policy as the application's (a job carries max_retries).
    provider.task(name="send")(lambda n: None)
    provider.task(name="bounce", max_retries=1, retry_backoff=0.01)(lambda: None)
    provider.task(name="fan_out")(lambda count: None)
    await provider.connect()
    yield provider
    await queue.purge()
    await provider.disconnect()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "lexigram.yaml").write_text(CONFIG)
    return tmp_path


@pytest.fixture
def env(redis_url: str, queue_name: str) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith(("LEXIGRAM_TASKS_", "OTEL_"))}
    values.update(APP_REDIS_URL=redis_url, QUEUE=queue_name, PYTHONUNBUFFERED="1")
    return values


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.close()


async def test_a_worker_serves_its_counters_while_it_runs_jobs(
    app_dir: Path, env: dict[str, str], producer: TaskProvider, workers: list[Worker]
) -> None:
    port = free_ports(1)
    worker = Worker(["app:provider", "--metrics-port", str(port), "-c", "4"], app_dir, env)
    workers.append(worker)
    await worker.ready(1)
    assert f"worker serves its metrics at http://127.0.0.1:{port}/metrics" in worker.output
    before = await asyncio.to_thread(scrape, port)
    assert value(before, "lexigram_tasks_jobs_completed_total") == 0

    for n in range(10):
        await producer.tasks["send"].enqueue(n)
    await producer.tasks["bounce"].enqueue()
    await producer.tasks["fan_out"].enqueue(5)

    async def counted() -> bool:
        found = await asyncio.to_thread(scrape, port)
        return (
            value(found, "lexigram_tasks_jobs_completed_total", lexigram_task_name="send") == 15
            and value(found, "lexigram_tasks_jobs_failed_total", lexigram_task_name="bounce") == 1
        )

    await eventually(counted, 30, message=f"the counters did not reach the jobs:\n{worker.output}")
    found = await asyncio.to_thread(scrape, port)
    failed = {"lexigram_task_name": "bounce", "error_type": "ConnectionError"}
    assert value(found, "lexigram_tasks_jobs_retried_total", **failed) == 1
    assert value(found, "lexigram_tasks_jobs_failed_total", **failed) == 1
    assert value(found, "lexigram_tasks_jobs_completed_total", lexigram_task_name="fan_out") == 1
    # Jobs enqueued by a task in the worker count where they were sent.
    assert value(found, "lexigram_tasks_jobs_enqueued_total", lexigram_task_name="send") == 5
    assert (
        value(found, "lexigram_tasks_job_duration_seconds_count", lexigram_task_name="send") == 15
    )
    assert value(found, "lexigram_tasks_jobs_in_flight") == 0

    assert await worker.stop() == 0
    assert not serving(port), "the metrics port still answers after the worker exited"


async def test_the_supervisor_port_serves_every_worker_process_labelled(
    app_dir: Path, env: dict[str, str], producer: TaskProvider, workers: list[Worker]
) -> None:
    port = free_ports(3)
    env["METRICS_PORT"] = str(port)
    supervisor = Worker(["--config", "lexigram.yaml", "--tasks-module", "app"], app_dir, env)
    workers.append(supervisor)
    await supervisor.ready(2)
    assert f"at http://127.0.0.1:{port}/metrics" in supervisor.output

    await producer.enqueue_many([producer.tasks["send"].job(n) for n in range(40)])

    async def all_counted() -> bool:
        found = await asyncio.to_thread(scrape, port)
        return value(found, "lexigram_tasks_jobs_completed_total") == 40

    await eventually(all_counted, 30, message=f"40 jobs were not counted:\n{supervisor.output}")
    merged = await asyncio.to_thread(scrape, port)
    up = {dict(ls)["worker_process"]: v for (n, ls), v in merged.items() if n.endswith("_up")}
    assert up == {"1": 1.0, "2": 1.0}
    for number in (1, 2):
        own = await asyncio.to_thread(scrape, port + number)  # worker i serves port + i
        done = value(own, "lexigram_tasks_jobs_completed_total")
        labelled = value(merged, "lexigram_tasks_jobs_completed_total", worker_process=str(number))
        assert done == labelled
    # Every series carries its process's label, the process metrics included.
    assert all("worker_process" in dict(ls) for (n, ls) in merged if n.startswith("process_"))

    assert await supervisor.stop() == 0
    assert not any(serving(port + i) for i in range(3))


async def test_a_worker_port_in_use_stops_the_supervisor_before_any_worker_starts(
    app_dir: Path, env: dict[str, str]
) -> None:
    port = free_ports(3)
    command = [*COMMAND, "app:provider", "--processes", "2", "--metrics-port", str(port)]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 2))
        taken.listen()
        result = await asyncio.to_thread(
            subprocess.run,
            command,
            cwd=app_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 3, result.stderr
    assert f"error: metrics port {port + 2} on 127.0.0.1 is in use" in result.stderr
    assert "started (pid" not in result.stderr
