"""The Prometheus integration: names as Prometheus shows them, what happens with a
global meter provider set before, the supervisor's merged endpoint, errors.

Whatever sets OpenTelemetry's global meter provider runs in a fresh interpreter:
it can be set once per process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from lexigram.tasks.integrations.prometheus import (
    WORKER_PROCESS_LABEL,
    check_port,
    serve_worker_processes,
)
from lexigram.tasks.testing import run_without

pytestmark = pytest.mark.timeout(60)

# Runs one completed, one retried-then-failed and one enqueued-from-a-task job on
# the memory backend, then prints the endpoint's exposition.
RUN_JOBS = """
import asyncio, urllib.request
from lexigram.tasks import MemoryTaskQueue, TaskFailedError, TaskProvider
from lexigram.tasks.integrations.prometheus import serve_metrics

provider = TaskProvider(queue=MemoryTaskQueue("mail"))

@provider.task(name="mail.send")
async def send() -> None: ...

@provider.task(name="mail.bounce", max_retries=1, retry_backoff=0.01)
async def bounce() -> None:
    raise ConnectionError("refused")

async def main() -> None:
    async with provider:
        await (await send.enqueue()).result(timeout=10)
        try:
            await (await bounce.enqueue()).result(timeout=10)
        except TaskFailedError:
            pass

with serve_metrics(0) as endpoint:
    asyncio.run(main())
    print(urllib.request.urlopen(endpoint.url, timeout=10).read().decode())
"""


def run_python(code: str, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + "".join(more)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels without the scope ones) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset(
                (k, v) for k, v in sample.labels.items() if not k.startswith("otel_scope")
            )
            found[sample.name, labels] = sample.value
    return found


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


def test_with_no_global_provider_the_documented_names_are_served() -> None:
    result = run_python(RUN_JOBS)
    assert result.returncode == 0, result.stderr
    found = samples(result.stdout)
    task = {"messaging_system": "memory", "messaging_destination_name": "mail"}
    send = labels(**task, lexigram_task_name="mail.send")
    bounce = labels(**task, lexigram_task_name="mail.bounce")
    bounce_error = labels(**task, lexigram_task_name="mail.bounce", error_type="ConnectionError")
    assert found["lexigram_tasks_jobs_enqueued_total", send] == 1
    assert found["lexigram_tasks_jobs_completed_total", send] == 1
    assert found["lexigram_tasks_jobs_retried_total", bounce_error] == 1
    assert found["lexigram_tasks_jobs_failed_total", bounce_error] == 1
    assert found["lexigram_tasks_jobs_in_flight", bounce] == 0
    assert found["lexigram_tasks_job_queue_wait_seconds_count", send] == 1
    completed = labels(**task, lexigram_task_name="mail.send", lexigram_task_outcome="completed")
    assert found["lexigram_tasks_job_duration_seconds_count", completed] == 1
    assert ("lexigram_tasks_job_duration_seconds_bucket", completed | {("le", "0.005")}) in found


def test_a_global_provider_with_a_prometheus_reader_is_kept() -> None:
    result = run_python(
        """
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from lexigram.tasks.integrations.prometheus import metric_reader, record_for_prometheus

        mine = MeterProvider(metric_readers=[metric_reader()])
        metrics.set_meter_provider(mine)
        assert record_for_prometheus() is False
        assert metrics.get_meter_provider() is mine
        """,
        RUN_JOBS,
    )
    assert result.returncode == 0, result.stderr
    assert "lexigram_tasks_jobs_completed_total{" in result.stdout


def test_a_global_provider_without_a_prometheus_reader_is_refused() -> None:
    result = run_python(
        """
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from lexigram.tasks.integrations.prometheus import serve_metrics

        metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
        serve_metrics(0)
        """
    )
    assert result.returncode == 1
    assert "ConfigurationError" in result.stderr
    assert "has no Prometheus reader" in result.stderr
    assert "add lexigram.tasks.integrations.prometheus.metric_reader()" in result.stderr


@pytest.fixture
def worker_endpoints() -> Iterator[dict[int, int]]:
    """Two endpoints standing in for worker processes 1 and 2, and a closed port for 3."""
    servers = []
    ports = {}
    for number, done in ((1, 5), (2, 7)):
        registry = CollectorRegistry()
        counter = Counter(
            "lexigram_tasks_jobs_completed",
            "Job executions that returned",
            ["lexigram_task_name"],
            registry=registry,
        )
        counter.labels("mail.send").inc(done)
        server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        servers.append((server, thread))
        ports[number] = server.server_port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        ports[3] = probe.getsockname()[1]  # closed again: nobody answers there
    yield ports
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_supervisor_endpoint_serves_each_worker_labelled(
    worker_endpoints: dict[int, int],
) -> None:
    with serve_worker_processes(0, "127.0.0.1", worker_endpoints) as endpoint:
        text = urllib.request.urlopen(endpoint.url, timeout=10).read().decode()
    found = samples(text)
    for number, done in (("1", 5), ("2", 7)):
        key = labels(lexigram_task_name="mail.send", **{WORKER_PROCESS_LABEL: number})
        assert found["lexigram_tasks_jobs_completed_total", key] == done
    up = {
        dict(labels)[WORKER_PROCESS_LABEL]: value
        for (name, labels), value in found.items()
        if name == "lexigram_tasks_worker_process_up"
    }
    assert up == {"1": 1.0, "2": 1.0, "3": 0.0}
    assert text.count("# TYPE lexigram_tasks_jobs_completed_total counter") == 1


def test_a_port_in_use_is_an_error_naming_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            serve_worker_processes(port, "127.0.0.1", {})
    with pytest.raises(ValueError, match="from 0 to 65535, got 70000"):
        check_port(70000)


def test_without_the_extra_the_errors_name_the_pip_command(tmp_path: Path) -> None:
    result = run_without(["prometheus_client"], "import lexigram.tasks.integrations.prometheus")
    assert result.returncode == 1
    assert 'pip install "lexigram-tasks[prometheus]"' in result.stderr, result.stderr

    (tmp_path / "mailapp.py").write_text(
        "from lexigram.tasks import MemoryTaskQueue, TaskProvider\n"
        "provider = TaskProvider(queue=MemoryTaskQueue())\n"
        "provider.task(name='noop')(lambda: None)\n"
    )
    cli = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "from lexigram.tasks.cli import main\n"
        "sys.exit(main(['worker', 'mailapp:provider', '--metrics-port', '0']))\n"
    )
    result = run_without(["prometheus_client"], cli)
    assert result.returncode == 3, result.stderr
    assert "error: --metrics-port: " in result.stderr
    assert 'pip install "lexigram-tasks[prometheus]"' in result.stderr
