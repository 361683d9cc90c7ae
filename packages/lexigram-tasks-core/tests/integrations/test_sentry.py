"""Failed jobs reported to Sentry, captured by a transport of the SDK's own kind that
keeps its envelopes in memory (no network): the memory backend, one process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sentry_sdk.envelope import Envelope
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.transport import Transport

from lexigram.tasks import MemoryTaskQueue, TaskFailedError, TaskProvider
from lexigram.tasks.integrations.sentry import JOB_CONTEXT, report_failures
from lexigram.tasks.testing import run_without

pytestmark = pytest.mark.timeout(30)


class KeptEnvelopes(Transport):
    """Sentry's transport interface, keeping what it is given."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def events(self) -> list[dict[str, Any]]:
        sentry_sdk.flush()
        found = []
        for envelope in self.envelopes:
            for item in envelope.items:
                event = item.get_event()
                if event is not None:
                    found.append(event)
        return found


@pytest.fixture
def sentry() -> Iterator[KeptEnvelopes]:
    transport = KeptEnvelopes()
    sentry_sdk.init(
        dsn="https://public@sentry.invalid/1",
        transport=transport,
        default_integrations=False,
        auto_enabling_integrations=False,
        # What sentry_sdk.init enables by default: error log records become events.
        integrations=[LoggingIntegration()],
    )
    yield transport
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)
    sentry_sdk.get_global_scope().clear()


@pytest.fixture
def provider(tracer_provider: TracerProvider) -> TaskProvider:
    return TaskProvider(queue=MemoryTaskQueue("billing"), tracer_provider=tracer_provider)


def register(provider: TaskProvider) -> None:
    @provider.task(name="billing.charge", max_retries=1, retry_backoff=0.01)
    async def charge(order: str) -> None:
        raise ValueError(f"card declined for order {order}")

    @provider.task(name="billing.receipt")
    async def receipt(order: str) -> str:
        return f"receipt {order}"


async def run_job(provider: TaskProvider, task: str) -> str:
    """Enqueue one job, wait for its end; its id."""
    async with provider:
        handle = await provider.tasks[task].enqueue("A-17")
        with contextlib.suppress(TaskFailedError):
            await handle.result(timeout=10)
    return handle.id


async def test_a_job_failing_for_good_is_one_event_with_its_job_and_trace(
    sentry: KeptEnvelopes, provider: TaskProvider, exporter: InMemorySpanExporter
) -> None:
    register(provider)
    report_failures(provider)
    job_id = await run_job(provider, "billing.charge")

    [event] = sentry.events()  # the retried attempt is not reported, nor the log line
    [exception] = event["exception"]["values"]
    assert exception["type"] == "ValueError"
    assert exception["value"] == "card declined for order A-17"
    assert event["tags"] == {
        "lexigram.task": "billing.charge",
        "lexigram.queue": "billing",
        "lexigram.job_id": job_id,
        "lexigram.attempt": "2",
        "lexigram.will_retry": "false",
    }
    job = event["contexts"][JOB_CONTEXT]
    assert (job["id"], job["task"], job["attempt"], job["max_retries"]) == (
        job_id,
        "billing.charge",
        2,
        1,
    )
    [send] = [s for s in exporter.get_finished_spans() if s.name == "send billing"]
    last_run = [s for s in exporter.get_finished_spans() if s.name == "process billing"][-1]
    assert send.context is not None and last_run.context is not None
    trace_id = format(send.context.trace_id, "032x")
    assert event["contexts"]["trace"]["trace_id"] == job["trace_id"] == trace_id
    assert event["contexts"]["trace"]["span_id"] == format(last_run.context.span_id, "016x")
    assert "A-17" not in str(event.get("extra", {}))  # arguments are not sent


async def test_every_attempt_reports_the_retried_one_too(
    sentry: KeptEnvelopes, provider: TaskProvider
) -> None:
    register(provider)
    report_failures(provider, every_attempt=True)
    await run_job(provider, "billing.charge")

    events = sentry.events()
    assert [(e["tags"]["lexigram.attempt"], e["tags"]["lexigram.will_retry"]) for e in events] == [
        ("1", "true"),
        ("2", "false"),
    ]


async def test_a_succeeding_job_sends_nothing_and_unsubscribing_stops_reports(
    sentry: KeptEnvelopes, provider: TaskProvider
) -> None:
    register(provider)
    stop = report_failures(provider)
    await run_job(provider, "billing.receipt")
    stop()
    await run_job(provider, "billing.charge")

    events = sentry.events()
    # Unsubscribed: only the worker's own log line reaches Sentry, as without the hook.
    assert [e.get("logentry", {}).get("message", "")[:18] for e in events] == ["job %s (%s) failed"]
    assert all(JOB_CONTEXT not in e["contexts"] for e in events)


def test_without_the_extra_the_import_error_names_the_pip_command() -> None:
    result = run_without(["sentry_sdk"], "import lexigram.tasks.integrations.sentry")
    assert result.returncode == 1
    assert 'pip install "lexigram-tasks[sentry]"' in result.stderr, result.stderr
