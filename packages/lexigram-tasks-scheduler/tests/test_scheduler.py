"""TaskScheduler on the memory backend, driven by an injected clock (no real minutes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from lexigram.tasks import Job, MemoryTaskQueue, TaskProvider
from lexigram.tasks.scheduler import (
    HEADER_FIRE_TIME,
    HEADER_TEMPLATE,
    InvalidScheduleError,
    MemoryTemplateStore,
    ReadOnlyTemplateError,
    ScheduleRegistry,
    StoreSnapshot,
    TaskScheduler,
    TemplateExistsError,
    TemplateNotFoundError,
)
from lexigram.tasks.testing import eventually

BERLIN = ZoneInfo("Europe/Berlin")
HOUR = 3600.0


class Clock:
    """A settable clock: tests move time, the scheduler reads it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def at(*fields: int, tz: ZoneInfo = UTC) -> float:  # type: ignore[assignment]
    return datetime(*fields, tzinfo=tz).timestamp()  # type: ignore[arg-type,misc]


async def drain(queue: MemoryTaskQueue) -> list[Job]:
    jobs: list[Job] = []
    while deliveries := await queue.dequeue(max_jobs=100):
        jobs.extend(d.job for d in deliveries if d.job is not None)
        await queue.ack_many(deliveries)
    return jobs


def fire_times(jobs: list[Job], name: str) -> list[str]:
    return [j.headers[HEADER_FIRE_TIME] for j in jobs if j.headers[HEADER_TEMPLATE] == name]


Make = Callable[..., tuple["TaskScheduler", Clock]]


@pytest.fixture
def registry() -> ScheduleRegistry:
    return ScheduleRegistry()


@pytest.fixture
def queue() -> MemoryTaskQueue:
    return MemoryTaskQueue()


@pytest.fixture
def make(registry: ScheduleRegistry, queue: MemoryTaskQueue) -> Make:
    store = MemoryTemplateStore()
    provider = TaskProvider(queue=queue)

    def build(now: float, **options: object) -> tuple[TaskScheduler, Clock]:
        clock = Clock(now)
        options.setdefault("store", store)
        scheduler = TaskScheduler(
            provider,
            registry=registry,
            clock=clock,
            attach=False,
            **options,  # type: ignore[arg-type]
        )
        return scheduler, clock

    return build


async def step_through(scheduler: TaskScheduler, clock: Clock, until: float) -> None:
    """Move time as the scheduler's loop does: to just after the next tick, waking
    at least every 10 minutes."""
    while clock.now < until:
        wakeup = scheduler.next_wakeup or until
        clock.now = min(wakeup + 0.001, clock.now + 600, until)
        await scheduler.run_due()


async def test_dst_days_fire_the_berlin_0230_job_once_each_beside_a_utc_one(
    registry: ScheduleRegistry,
    queue: MemoryTaskQueue,
    make: Make,
) -> None:
    @registry.scheduled(cron="30 2 * * *", timezone="Europe/Berlin", name="berlin")
    def berlin() -> None: ...

    @registry.scheduled(cron="30 2 * * *", name="utc")
    def utc() -> None: ...

    for start, end in [
        (at(2024, 3, 30, 12), at(2024, 4, 1, 12)),  # spring forward on 31 March
        (at(2024, 10, 26, 12), at(2024, 10, 28, 12)),  # fall back on 27 October
    ]:
        scheduler, clock = make(start, store=MemoryTemplateStore())
        await scheduler.run_due()
        await step_through(scheduler, clock, end)
    jobs = await drain(queue)
    assert fire_times(jobs, "berlin") == [
        "2024-03-31T03:00:00+02:00",  # 02:30 does not exist: fires as the clock jumps
        "2024-04-01T02:30:00+02:00",
        "2024-10-27T02:30:00+02:00",  # 02:30 happens twice: fires once
        "2024-10-28T02:30:00+01:00",
    ]
    assert fire_times(jobs, "utc") == [
        "2024-03-31T02:30:00+00:00",
        "2024-04-01T02:30:00+00:00",
        "2024-10-27T02:30:00+00:00",
        "2024-10-28T02:30:00+00:00",
    ]


async def test_each_tick_is_an_ordinary_job_that_a_worker_runs(registry: ScheduleRegistry) -> None:
    seen: list[str] = []

    @registry.scheduled(cron="*/10 * * * *", kwargs={"who": "scheduler"})
    async def greet(who: str) -> str:
        seen.append(who)
        return f"hi {who}"

    provider = TaskProvider(queue=MemoryTaskQueue(), worker_count=1, poll_interval=0.01)
    clock = Clock(at(2024, 5, 1, 9, 55))
    scheduler = TaskScheduler(provider, registry=registry, clock=clock, attach=False)
    async with provider:
        await scheduler.run_due()
        clock.now = at(2024, 5, 1, 10, 0, 1)
        [tick] = await scheduler.run_due()
        assert tick.fire_datetime == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
        handle = provider.result_store
        assert handle is not None
        result = await handle.wait(tick.job_id, 5)
        assert result.unwrap() == "hi scheduler"
    assert seen == ["scheduler"]


async def test_first_start_fires_nothing_from_the_past(
    registry: ScheduleRegistry,
    queue: MemoryTaskQueue,
    make: Make,
) -> None:
    @registry.scheduled(cron="* * * * *")
    def every_minute() -> None: ...

    scheduler, clock = make(at(2024, 5, 1, 10, 0, 30))
    assert await scheduler.run_due() == []
    clock.now += 30
    assert len(await scheduler.run_due()) == 1
    assert await scheduler.run_due() == []  # same tick again: nothing


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("skip", []),
        ("once", ["2024-05-01T15:00:00+00:00"]),
        ("all", [f"2024-05-01T{h}:00:00+00:00" for h in (13, 14, 15)]),
    ],
)
async def test_restart_after_downtime_follows_the_catch_up_policy(
    registry: ScheduleRegistry,
    queue: MemoryTaskQueue,
    make: Make,
    policy: str,
    expected: list[str],
) -> None:
    @registry.scheduled(cron="0 * * * *", name="hourly", catch_up=policy, catch_up_limit=3)
    def hourly() -> None: ...

    first, clock = make(at(2024, 5, 1, 9, 30))
    await first.run_due()
    clock.now = at(2024, 5, 1, 10, 0, 2)
    assert len(await first.run_due()) == 1  # on time: fires under every policy
    await drain(queue)
    # The process dies; a new one starts five and a half hours later.
    second, _ = make(at(2024, 5, 1, 15, 30))
    await second.run_due()
    assert fire_times(await drain(queue), "hourly") == expected
    # ...and never again for the same ticks.
    await second.run_due()
    assert await drain(queue) == []


async def test_skip_policy_still_fires_ticks_that_are_on_time(
    registry: ScheduleRegistry,
    queue: MemoryTaskQueue,
    make: Make,
) -> None:
    @registry.scheduled(cron="0 * * * *", catch_up="skip", misfire_grace=30)
    def hourly() -> None: ...

    scheduler, clock = make(at(2024, 5, 1, 9, 30))
    await scheduler.run_due()
    clock.now = at(2024, 5, 1, 10, 0, 20)
    assert len(await scheduler.run_due()) == 1
    clock.now = at(2024, 5, 1, 11, 0, 45)  # 45 s late: beyond the grace
    assert await scheduler.run_due() == []
    clock.now = at(2024, 5, 1, 12, 0, 1)
    assert len(await scheduler.run_due()) == 1


async def test_a_long_outage_never_fires_a_storm(
    registry: ScheduleRegistry,
    queue: MemoryTaskQueue,
    make: Make,
) -> None:
    @registry.scheduled(cron="* * * * * *", name="every-second", catch_up="all", catch_up_limit=5)
    def tick() -> None: ...

    scheduler, clock = make(at(2024, 5, 1))
    await scheduler.run_due()
    clock.now += 30 * 24 * HOUR  # a month of per-second ticks missed
    fired = await scheduler.run_due()
    assert len(fired) == 5
    assert fired[-1].fire_time == clock.now


async def test_three_schedulers_sharing_a_store_fire_each_tick_once(
    registry: ScheduleRegistry,
    queue: MemoryTaskQueue,
    make: Make,
) -> None:
    @registry.scheduled(cron="*/5 * * * *", name="five")
    def five() -> None: ...

    schedulers = [make(at(2024, 5, 1, 10)) for _ in range(3)]
    for minute in range(0, 61):
        for _, clock in schedulers:
            clock.now = at(2024, 5, 1, 10) + minute * 60 + 0.5
        await asyncio.gather(*(s.run_due() for s, _ in schedulers))
    times = fire_times(await drain(queue), "five")
    assert len(times) == 12
    assert len(set(times)) == 12


async def test_runtime_templates_add_list_pause_resume_remove(
    registry: ScheduleRegistry,
    queue: MemoryTaskQueue,
    make: Make,
) -> None:
    @registry.scheduled(cron="0 6 * * *", name="from-code")
    def nightly() -> None: ...

    scheduler, clock = make(at(2024, 5, 1, 6))  # 08:00 in Berlin
    report = scheduler.provider.task(name="reports.daily")(lambda region: region)
    template = await scheduler.add(
        "eu-report", report, "0 9 * * 1-5", timezone="Europe/Berlin", kwargs={"region": "eu"}
    )
    assert template.origin == "runtime"
    listing = {info.name: info for info in await scheduler.list()}
    assert {n: i.origin for n, i in listing.items()} == {
        "from-code": "code",
        "eu-report": "runtime",
    }
    assert listing["eu-report"].next_run == datetime(2024, 5, 1, 9, 0, tzinfo=BERLIN)
    assert await scheduler.next_runs("eu-report", 3) == [
        datetime(2024, 5, 1, 9, tzinfo=BERLIN),
        datetime(2024, 5, 2, 9, tzinfo=BERLIN),
        datetime(2024, 5, 3, 9, tzinfo=BERLIN),
    ]

    # Another scheduler on the same store sees it and fires it.
    other, other_clock = make(at(2024, 5, 1, 6))
    other_clock.now = at(2024, 5, 1, 7, 0, 1)  # 09:00:01 in Berlin
    [tick] = await other.run_due()
    assert tick.template == "eu-report"

    await scheduler.pause("eu-report")
    assert (await scheduler.get("eu-report")).paused
    assert (await scheduler.get("eu-report")).next_run is None
    other_clock.now = at(2024, 5, 3, 7, 0, 1)
    assert "eu-report" not in [t.template for t in await other.run_due()]
    clock.now = other_clock.now + 60
    await scheduler.resume("eu-report")  # the paused ticks are not caught up
    assert "eu-report" not in [t.template for t in await other.run_due()]
    other_clock.now = at(2024, 5, 6, 7, 0, 1)  # next Monday
    assert "eu-report" in [t.template for t in await other.run_due()]

    await scheduler.remove("eu-report")
    assert [i.name for i in await scheduler.list()] == ["from-code"]
    with pytest.raises(TemplateNotFoundError, match="no schedule named 'eu-report'"):
        await scheduler.remove("eu-report")
    with pytest.raises(ReadOnlyTemplateError, match="defined in code"):
        await scheduler.remove("from-code")
    jobs = await drain(queue)
    assert fire_times(jobs, "eu-report") == [
        "2024-05-01T09:00:00+02:00",
        "2024-05-06T09:00:00+02:00",
    ]
    assert all(j.kwargs == {"region": "eu"} for j in jobs if j.task == "reports.daily")


async def test_trigger_enqueues_one_job_now_without_moving_the_schedule(
    registry: ScheduleRegistry, queue: MemoryTaskQueue, make: Make
) -> None:
    @registry.scheduled(cron="0 6 * * *", name="nightly", kwargs={"full": True})
    def nightly(full: bool) -> None: ...

    scheduler, _ = make(at(2024, 5, 1, 10))
    await scheduler.pause("nightly")  # paused templates can be triggered too
    job_id = await scheduler.trigger("nightly")
    [job] = await drain(queue)
    assert (job.id, job.kwargs) == (job_id, {"full": True})
    assert job.headers[HEADER_TEMPLATE] == "nightly"
    assert job.headers[HEADER_FIRE_TIME] == "2024-05-01T10:00:00+00:00"
    await scheduler.resume("nightly")
    assert (await scheduler.get("nightly")).next_run == datetime(2024, 5, 2, 6, tzinfo=UTC)
    with pytest.raises(TemplateNotFoundError, match="no schedule named 'nope'"):
        await scheduler.trigger("nope")


async def test_runtime_add_checks_its_input(registry: ScheduleRegistry, make: Make) -> None:
    @registry.scheduled(cron="0 6 * * *", name="from-code")
    def nightly() -> None: ...

    scheduler, _ = make(at(2024, 5, 1))
    with pytest.raises(InvalidScheduleError, match="has no handler: no task named 'nope'"):
        await scheduler.add("x", "nope", "0 * * * *")
    task_name = next(iter(scheduler.provider.tasks))
    with pytest.raises(InvalidScheduleError, match="invalid cron"):
        await scheduler.add("x", task_name, "0 0 0 * *")
    with pytest.raises(InvalidScheduleError, match="unknown timezone"):
        await scheduler.add("x", task_name, "0 * * * *", timezone="CEST")
    with pytest.raises(InvalidScheduleError, match="do not fit"):
        await scheduler.add("x", task_name, "0 * * * *", args=[1])
    with pytest.raises(InvalidScheduleError, match="defined in code"):
        await scheduler.add("from-code", task_name, "0 * * * *")
    await scheduler.add("x", task_name, "0 * * * *")
    with pytest.raises(TemplateExistsError):
        await scheduler.add("x", task_name, "0 * * * *")
    with pytest.raises(TemplateNotFoundError):
        await scheduler.pause("missing")


async def test_pausing_a_code_template(registry: ScheduleRegistry, make: Make) -> None:
    @registry.scheduled(cron="* * * * *", name="minutely")
    def minutely() -> None: ...

    scheduler, clock = make(at(2024, 5, 1, 10, 0, 30))
    await scheduler.run_due()
    await scheduler.pause("minutely")
    clock.now += 120
    assert await scheduler.run_due() == []
    await scheduler.resume("minutely")
    clock.now += 60
    assert len(await scheduler.run_due()) == 1


async def test_jitter_delays_the_job_within_the_bound(
    registry: ScheduleRegistry,
    queue: MemoryTaskQueue,
    make: Make,
) -> None:
    @registry.scheduled(cron="* * * * *", jitter=30)
    def spread() -> None: ...

    scheduler, clock = make(at(2024, 5, 1, 10, 0, 30))
    await scheduler.run_due()
    clock.now += 30
    [tick] = await scheduler.run_due()
    counts = await queue.counts()
    assert counts.delayed + counts.ready == 1
    entry = queue._entries[tick.job_id]
    job = Job.from_json(entry.payload)
    assert job.run_at is not None
    assert 0 <= job.run_at - job.enqueued_at <= 30.01


async def test_a_failed_enqueue_gives_the_tick_back(
    registry: ScheduleRegistry,
    queue: MemoryTaskQueue,
    make: Make,
) -> None:
    @registry.scheduled(cron="* * * * *", name="minutely")
    def minutely() -> None: ...

    scheduler, clock = make(at(2024, 5, 1, 10, 0, 30))
    await scheduler.run_due()
    clock.now += 30
    original = queue.enqueue

    async def broken(job: Job) -> str:
        raise ConnectionError("broker down")

    queue.enqueue = broken  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await scheduler.run_due()
    queue.enqueue = original  # type: ignore[method-assign]
    [tick] = await scheduler.run_due()
    assert tick.fire_time == at(2024, 5, 1, 10, 1)


async def test_tick_span_is_a_root_with_the_send_spans_as_children(
    registry: ScheduleRegistry, queue: MemoryTaskQueue
) -> None:
    @registry.scheduled(cron="* * * * *", name="a")
    def a() -> None: ...

    @registry.scheduled(cron="*/2 * * * *", name="b")
    def b() -> None: ...

    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    provider = TaskProvider(queue=queue, tracer_provider=tracing)
    clock = Clock(at(2024, 5, 1, 10, 0, 30))
    scheduler = TaskScheduler(provider, registry=registry, clock=clock, attach=False)
    await scheduler.run_due()
    assert exporter.get_finished_spans() == ()  # nothing due: no span
    clock.now += 60  # 10:01:30: only "a" is due
    await scheduler.run_due()
    clock.now += 60  # 10:02:30: both
    await scheduler.run_due()
    spans = exporter.get_finished_spans()
    ticks = [s for s in spans if s.name == "lexigram.scheduler.tick"]
    sends = [s for s in spans if s.name.startswith("send ")]
    assert len(ticks) == 2 and len(sends) == 3
    assert all(t.kind is SpanKind.INTERNAL and t.parent is None for t in ticks)
    assert [t.attributes["lexigram.scheduler.due_count"] for t in ticks] == [1, 2]  # type: ignore[index]
    for send in sends:
        assert send.kind is SpanKind.PRODUCER
        assert send.parent is not None
        assert send.parent.span_id in {t.context.span_id for t in ticks}
    claims = [e.attributes for t in ticks for e in t.events if e.name == "claim"]
    assert [c["lexigram.scheduler.template"] for c in claims] == ["a", "a", "b"]  # type: ignore[index]
    assert all(c["lexigram.scheduler.lock_won"] for c in claims)  # type: ignore[index]


async def test_the_loop_survives_a_failing_store_and_stops_cleanly(
    registry: ScheduleRegistry, queue: MemoryTaskQueue, caplog: pytest.LogCaptureFixture
) -> None:
    @registry.scheduled(cron="* * * * * *", name="per-second")
    def beat() -> None: ...

    class FlakyStore(MemoryTemplateStore):
        failures = 2

        async def load(self) -> StoreSnapshot:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("store unreachable")
            return await super().load()

    provider = TaskProvider(queue=queue)
    scheduler = TaskScheduler(provider, registry=registry, store=FlakyStore())
    await scheduler.start()
    await scheduler.start()  # idempotent
    try:
        await eventually(lambda: _ready(queue), timeout=10)
    finally:
        await scheduler.stop()
    assert caplog.text.count("scheduler tick failed") == 2
    settled = (await queue.counts()).ready
    await asyncio.sleep(1.2)  # stopped: no more ticks arrive
    assert (await queue.counts()).ready == settled


async def _ready(queue: MemoryTaskQueue) -> bool:
    return (await queue.counts()).ready >= 1
