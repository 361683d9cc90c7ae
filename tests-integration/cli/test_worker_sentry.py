"""Sentry reporting in a real ``lexigram-tasks worker`` process on Redis: the
application initialises Sentry with a transport that writes each event to a
file (no network), and ``report_failures`` sends the error of the failing job
with its id, task, attempt and the trace the producer started; the job that
succeeds sends nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lexigram.tasks import TaskProvider
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.testing import eventually

pytestmark = pytest.mark.timeout(90)

APP = """
import json
import os

import sentry_sdk
from sentry_sdk.transport import Transport

from lexigram.tasks import TaskProvider
from lexigram.tasks.integrations.sentry import report_failures
from lexigram.tasks.redis import RedisTaskQueue


class EventsToFile(Transport):
    def capture_envelope(self, envelope):
        for item in envelope.items:
            event = item.get_event()
            if event is not None:
                with open(os.environ["SENTRY_EVENTS"], "a") as out:
                    out.write(json.dumps(event, default=str) + "\\n")


sentry_sdk.init(dsn="https://public@sentry.invalid/1", transport=EventsToFile())
provider = TaskProvider(
    queue=RedisTaskQueue(redis_url=os.environ["APP_REDIS_URL"], queue_name=os.environ["QUEUE"])
)
report_failures(provider)


@provider.task(name="billing.receipt")
async def receipt(order: str) -> str:
    return f"receipt for {order}"


@provider.task(name="billing.charge")
async def charge(order: str) -> None:
    raise ValueError("card declined")
"""


@pytest.fixture
def queue_name() -> str:
    return f"lxsentry-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def producer(
    redis_url: str, queue_name: str, spans: InMemorySpanExporter
) -> AsyncIterator[TaskProvider]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    queue = RedisTaskQueue(redis_url=redis_url, queue_name=queue_name)
    provider = TaskProvider(queue=queue, tracer_provider=tracer_provider)
    provider.task(name="billing.receipt")(lambda order: None)
    provider.task(name="billing.charge")(lambda order: None)
    await provider.connect()
    yield provider
    await queue.purge()
    await provider.disconnect()
    tracer_provider.shutdown()


def start_worker(cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lexigram.tasks.cli", "worker", "app:provider", "-c", "1"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_the_failing_job_is_one_event_with_its_job_and_trace(
    tmp_path: Path,
    redis_url: str,
    queue_name: str,
    producer: TaskProvider,
    spans: InMemorySpanExporter,
) -> None:
    (tmp_path / "app.py").write_text(APP)
    sent = tmp_path / "events.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEXIGRAM_TASKS_", "SENTRY"))}
    env.update(APP_REDIS_URL=redis_url, QUEUE=queue_name, SENTRY_EVENTS=str(sent))
    worker = start_worker(tmp_path, env)
    try:
        await producer.tasks["billing.receipt"].enqueue("A-17")
        charged = await producer.tasks["billing.charge"].enqueue("A-17")
        await eventually(lambda: events(sent), 60, message="no Sentry event was written")
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(worker.communicate, timeout=30)
    assert worker.returncode == 0, stderr

    [event] = events(sent)  # the receipt sent nothing; the worker's log line is left out
    [exception] = event["exception"]["values"]
    assert (exception["type"], exception["value"]) == ("ValueError", "card declined")
    assert event["tags"]["lexigram.job_id"] == charged.id
    assert event["tags"]["lexigram.task"] == "billing.charge"
    assert event["tags"]["lexigram.attempt"] == "1"
    assert event["tags"]["lexigram.queue"] == queue_name
    [send] = [
        s for s in spans.get_finished_spans() if s.attributes["messaging.message.id"] == charged.id
    ]
    assert send.context is not None
    assert event["contexts"]["trace"]["trace_id"] == format(send.context.trace_id, "032x")
    assert event["contexts"]["lexigram job"]["trace_id"] == format(send.context.trace_id, "032x")
