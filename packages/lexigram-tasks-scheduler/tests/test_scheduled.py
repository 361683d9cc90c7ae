"""@scheduled: definition-time checks and how functions become tasks."""

from __future__ import annotations

from typing import Any

import pytest

import lexigram.tasks
from lexigram.tasks import MemoryTaskQueue, TaskProvider
from lexigram.tasks.scheduler import (
    CatchUp,
    InvalidScheduleError,
    ScheduleRegistry,
    TaskScheduler,
    default_registry,
    scheduled,
)


@pytest.fixture
def registry() -> ScheduleRegistry:
    return ScheduleRegistry()


def test_seed_form_works_from_the_top_level_package() -> None:
    assert lexigram.tasks.scheduled is scheduled
    assert lexigram.tasks.TaskScheduler is TaskScheduler
    before = default_registry.version

    @lexigram.tasks.scheduled(cron="0 */6 * * *")
    async def sync_products() -> None:
        """Refresh product catalogue every 6 hours."""

    try:
        entry = default_registry.get(f"{__name__}.{sync_products.__qualname__}")
        assert entry is not None
        assert entry.handler is sync_products  # the function is returned unchanged
        assert entry.template.cron == "0 */6 * * *"
        assert entry.template.timezone == "UTC"
        assert entry.template.catch_up is CatchUp.ONCE
        assert entry.template.description == "Refresh product catalogue every 6 hours."
        assert default_registry.version > before
    finally:
        default_registry.clear()


def test_scheduler_registers_functions_as_tasks(registry: ScheduleRegistry) -> None:
    @registry.scheduled(cron="*/5 * * * *", kwargs={"region": "eu"})
    def plain(region: str) -> str:
        return region

    @registry.scheduled(cron="0 0 * * *")
    async def coroutine() -> None: ...

    provider = TaskProvider(queue=MemoryTaskQueue())
    TaskScheduler(provider, registry=registry, attach=False)
    plain_task = provider.tasks[f"{__name__}.{plain.__qualname__}"]
    assert plain_task.fn is plain and not plain_task.is_async
    assert provider.tasks[f"{__name__}.{coroutine.__qualname__}"].is_async


def test_stacked_above_provider_task_keeps_its_options(registry: ScheduleRegistry) -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())

    @registry.scheduled(cron="0 * * * *")
    @provider.task(name="billing.invoice", max_retries=3)
    async def invoice() -> None: ...

    TaskScheduler(provider, registry=registry, attach=False)
    assert list(provider.tasks) == ["billing.invoice"]
    assert provider.tasks["billing.invoice"].max_retries == 3
    assert registry.get("billing.invoice") is not None


def test_below_provider_task_uses_that_task(registry: ScheduleRegistry) -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())

    @provider.task(name="custom.name")
    @registry.scheduled(cron="0 * * * *", name="hourly")
    async def job() -> None: ...

    scheduler = TaskScheduler(provider, registry=registry, attach=False)
    assert list(provider.tasks) == ["custom.name"]
    assert scheduler._templates.code["hourly"].task == "custom.name"


def test_bare_decorator_is_refused(registry: ScheduleRegistry) -> None:
    with pytest.raises(InvalidScheduleError, match=r"write @scheduled\(cron="):

        @registry.scheduled  # type: ignore[arg-type]
        async def job() -> None: ...


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "0 25 * * *"}, "schedule 'x': invalid cron expression '0 25 \\* \\* \\*'"),
        ({"cron": "@often"}, "invalid cron expression '@often'"),
        ({"cron": "0 * * * *", "timezone": "Europe/Atlantis"}, "unknown timezone"),
        ({"cron": "0 * * * *", "args": [1, 2]}, "do not fit"),
        ({"cron": "0 * * * *", "kwargs": {"nope": 1}}, "do not fit"),
        ({"cron": "0 * * * *", "kwargs": {"day": object()}}, "not JSON-serialisable"),
        ({"cron": "0 * * * *", "args": "monday"}, "must be a list or tuple"),
        ({"cron": "0 * * * *", "catch_up": "sometimes"}, "catch_up must be one of"),
        ({"cron": "0 * * * *", "jitter": -1}, "jitter must be >= 0"),
        ({"cron": "0 * * * *", "priority": 12}, "priority must be between 0 and 9"),
    ],
)
def test_bad_input_fails_at_definition_time(
    registry: ScheduleRegistry, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidScheduleError, match=message):

        @registry.scheduled(name="x", **options)
        def job(day: str = "mon") -> None: ...

    assert len(registry) == 0


def test_duplicate_names_are_refused(registry: ScheduleRegistry) -> None:
    @registry.scheduled(cron="0 * * * *", name="report")
    def first() -> None: ...

    with pytest.raises(InvalidScheduleError, match="already exists"):

        @registry.scheduled(cron="0 * * * *", name="report")
        def second() -> None: ...


def test_one_function_with_two_schedules(registry: ScheduleRegistry) -> None:
    @registry.scheduled(cron="0 8 * * *", name="morning", kwargs={"slot": "am"})
    @registry.scheduled(cron="0 20 * * *", name="evening", kwargs={"slot": "pm"})
    def digest(slot: str) -> None: ...

    provider = TaskProvider(queue=MemoryTaskQueue())
    scheduler = TaskScheduler(provider, registry=registry, attach=False)
    assert sorted(scheduler._templates.code) == ["evening", "morning"]
    assert len(provider.tasks) == 1


def test_unknown_backend_and_missing_capability_fail_when_attached(
    registry: ScheduleRegistry,
) -> None:
    @registry.scheduled(cron="0 * * * *", backend="reports")
    def job() -> None: ...

    provider = TaskProvider(queue=MemoryTaskQueue())
    with pytest.raises(InvalidScheduleError, match="backend 'reports' is not configured"):
        TaskScheduler(provider, registry=registry, attach=False)

    class NoDelayQueue(MemoryTaskQueue):
        capabilities = frozenset()

    other = ScheduleRegistry()

    @other.scheduled(cron="0 * * * *", jitter=30)
    def spread() -> None: ...

    with pytest.raises(InvalidScheduleError, match="jitter needs a backend with the 'delay'"):
        TaskScheduler(TaskProvider(queue=NoDelayQueue()), registry=other, attach=False)


def test_one_scheduler_per_provider(registry: ScheduleRegistry) -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())
    scheduler = TaskScheduler(provider, registry=registry)
    assert TaskScheduler.for_provider(provider) is scheduler
    with pytest.raises(ValueError, match="already has a TaskScheduler"):
        TaskScheduler(provider, registry=registry)
