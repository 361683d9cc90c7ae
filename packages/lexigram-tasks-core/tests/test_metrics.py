"""Metrics of the job lifecycle, through an explicit SDK meter provider (no globals set)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
)

from lexigram.tasks import MemoryTaskQueue, TaskFailedError, TaskProvider
from lexigram.tasks._otel import DURATION_BUCKETS
from lexigram.tasks.testing import eventually

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


def collect(reader: InMemoryMetricReader) -> dict[str, Metric]:
    data = reader.get_metrics_data()
    if data is None:  # nothing recorded yet
        return {}
    return {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        if scope.scope.name == "lexigram.tasks"
        for metric in scope.metrics
    }


def points(metric: Metric) -> dict[frozenset[tuple[str, Any]], Any]:
    """Data points by their attribute set."""
    return {frozenset((p.attributes or {}).items()): p for p in metric.data.data_points}


def values(metrics: dict[str, Metric], name: str) -> dict[frozenset[tuple[str, Any]], int]:
    result = {}
    for key, point in points(metrics[name]).items():
        assert isinstance(point, NumberDataPoint)
        result[key] = int(point.value)
    return result


def attrs(task: str, queue: str = "default", **extra: Any) -> frozenset[tuple[str, Any]]:
    base = {
        "messaging.system": "memory",
        "messaging.destination.name": queue,
        "lexigram.task.name": task,
    }
    return frozenset({**base, **extra}.items())


async def test_counters_histograms_and_in_flight_over_success_retry_and_failure(
    meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    provider = TaskProvider(queue=MemoryTaskQueue(), meter_provider=meter_provider, worker_count=2)
    in_flight_seen: list[dict[frozenset[tuple[str, Any]], int]] = []

    @provider.task(name="ok")
    async def ok(i: int) -> int:
        in_flight_seen.append(values(collect(reader), "lexigram.tasks.jobs.in_flight"))
        return i

    @provider.task(name="bad", max_retries=1, retry_backoff=0.01)
    async def bad() -> None:
        raise KeyError("missing")

    async with provider:
        first = await ok.enqueue(1)
        assert await first.result(timeout=5) == 1
        handles = await provider.enqueue_many([ok.job(2), bad.job()])
        assert await handles[0].result(timeout=5) == 2
        with pytest.raises(TaskFailedError):
            await handles[1].result(timeout=5)

    metrics = collect(reader)
    assert values(metrics, "lexigram.tasks.jobs.enqueued") == {attrs("ok"): 2, attrs("bad"): 1}
    assert values(metrics, "lexigram.tasks.jobs.completed") == {attrs("ok"): 2}
    assert values(metrics, "lexigram.tasks.jobs.retried") == {
        attrs("bad", **{"error.type": "KeyError"}): 1
    }
    assert values(metrics, "lexigram.tasks.jobs.failed") == {
        attrs("bad", **{"error.type": "KeyError"}): 1
    }
    # in flight: 1 while the first job ran, back to 0 for every attribute set afterwards
    assert in_flight_seen[0] == {attrs("ok"): 1}
    assert set(values(metrics, "lexigram.tasks.jobs.in_flight").values()) == {0}

    duration = metrics["lexigram.tasks.job.duration"]
    assert duration.unit == "s"
    counts = {}
    for key, point in points(duration).items():
        assert isinstance(point, HistogramDataPoint)
        assert tuple(point.explicit_bounds) == DURATION_BUCKETS
        assert 0 <= point.min <= point.max < 5
        counts[key] = point.count
    assert counts == {
        attrs("ok", **{"lexigram.task.outcome": "completed"}): 2,
        attrs("bad", **{"lexigram.task.outcome": "retried"}): 1,
        attrs("bad", **{"lexigram.task.outcome": "dead_lettered"}): 1,
    }

    wait = metrics["lexigram.tasks.job.queue_wait"]
    assert wait.unit == "s"
    wait_counts = {key: p.count for key, p in points(wait).items()}
    assert wait_counts == {attrs("ok"): 2, attrs("bad"): 1}  # first attempts only


async def test_delayed_job_waits_from_its_run_time_not_its_enqueue_time(
    meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    provider = TaskProvider(
        queue=MemoryTaskQueue(), meter_provider=meter_provider, poll_interval=0.05
    )

    @provider.task(name="later")
    async def later() -> None: ...

    async with provider:
        await (await later.options(delay=0.5).enqueue()).result(timeout=5)
    [point] = collect(reader)["lexigram.tasks.job.queue_wait"].data.data_points
    assert isinstance(point, HistogramDataPoint)
    assert point.count == 1 and point.max < 0.4


async def test_invalid_messages_count_as_failed(
    meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    queue = MemoryTaskQueue("raw")
    provider = TaskProvider(queue=queue, meter_provider=meter_provider)
    provider.task(name="t")(lambda: None)  # workers start only with a task to run
    async with provider:
        queue.push_raw(b"not json")
        await eventually(lambda: "lexigram.tasks.jobs.failed" in collect(reader), timeout=5)
    assert values(collect(reader), "lexigram.tasks.jobs.failed") == {
        attrs("", queue="raw", **{"error.type": "MalformedJobError"}): 1
    }


async def test_failed_enqueue_is_not_counted(
    meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    provider = TaskProvider(queue=MemoryTaskQueue(), meter_provider=meter_provider)

    @provider.task(name="t")
    async def t(value: object) -> None: ...

    with pytest.raises(TypeError):
        await t.enqueue(object())  # not JSON-serialisable
    assert "lexigram.tasks.jobs.enqueued" not in collect(reader)
    await t.enqueue("fine")
    assert values(collect(reader), "lexigram.tasks.jobs.enqueued") == {attrs("t"): 1}


# Setting a global provider cannot be undone in a process, so this runs in its own.
GLOBAL_SDK_SET_LATE = """
import asyncio
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from lexigram.tasks import MemoryTaskQueue, TaskProvider

provider = TaskProvider(queue=MemoryTaskQueue())


@provider.task(name="t")
async def t() -> None: ...


async def main() -> None:
    reader = InMemoryMetricReader()
    async with provider:
        await t.enqueue()  # no SDK yet, and the provider has seen that
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        await t.enqueue()
    data = reader.get_metrics_data()
    if data is None:  # nothing recorded
        print([])
        return
    enqueued = [
        point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "lexigram.tasks.jobs.enqueued"
        for point in metric.data.data_points
    ]
    print(enqueued)


asyncio.run(main())
"""


def test_a_global_sdk_set_after_the_provider_counts_the_very_next_enqueue() -> None:
    result = subprocess.run(
        [sys.executable, "-c", GLOBAL_SDK_SET_LATE], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[1]"]
