"""Template stores (memory, Redis, PostgreSQL) keep the same promises, against real servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from lexigram.tasks import BackendConnectionError, MemoryTaskQueue, TaskProvider
from lexigram.tasks.scheduler import (
    CatchUp,
    ScheduleRegistry,
    ScheduleTemplate,
    TaskScheduler,
    TemplateExistsError,
    TemplateStore,
)
from lexigram.tasks.scheduler.postgres_store import PostgresTemplateStore
from lexigram.tasks.scheduler.redis_store import RedisTemplateStore

StoreFactory = Callable[[], TemplateStore]  # the store_factory fixture (conftest.py)


@asynccontextmanager
async def connected(factory: StoreFactory) -> AsyncIterator[TemplateStore]:
    store = factory()
    await store.connect()
    await store.connect()  # idempotent
    try:
        yield store
    finally:
        await store.disconnect()
        await store.disconnect()


def template(name: str = "nightly") -> ScheduleTemplate:
    return ScheduleTemplate(
        name=name,
        task="reports.build",
        cron="0 3 * * *",
        timezone="Europe/Berlin",
        kwargs={"region": "eu"},
        catch_up=CatchUp.ALL,
        catch_up_limit=4,
        origin="runtime",
    )


async def test_cursor_starts_once_and_only_moves_forward(store_factory: StoreFactory) -> None:
    async with connected(store_factory) as store:
        assert await store.init_cursor("a", 100.0) == 100.0
        assert await store.init_cursor("a", 500.0) == 100.0  # set only if absent
        assert await store.claim("a", 160.0) == 100.0
        assert await store.claim("a", 160.0) is None  # already there
        assert await store.claim("a", 120.0) is None  # never backwards
        assert await store.claim("unknown", 160.0) is None
        await store.release("a", 160.0, 100.0)
        assert await store.claim("a", 160.0) == 100.0  # given back: claimable again
        await store.release("a", 999.0, 100.0)  # not the current cursor: no effect
        assert (await store.load()).states["a"].last_fire == 160.0


async def test_of_many_concurrent_claims_on_separate_connections_one_wins(
    store_factory: StoreFactory,
) -> None:
    stores = [store_factory() for _ in range(3)]
    await asyncio.gather(*(s.connect() for s in stores))
    try:
        await stores[0].init_cursor("tick", 1000.0)
        for fire_time in (1001.0, 1002.0, 1003.0):
            results = await asyncio.gather(
                *(stores[i % 3].claim("tick", fire_time) for i in range(12))
            )
            winners = [r for r in results if r is not None]
            assert winners == [fire_time - 1]
    finally:
        await asyncio.gather(*(s.disconnect() for s in stores))


async def test_runtime_templates_round_trip_and_names_are_unique(
    store_factory: StoreFactory,
) -> None:
    async with connected(store_factory) as store:
        await store.add_template(template(), now=50.0)
        with pytest.raises(TemplateExistsError, match="'nightly' already exists"):
            await store.add_template(template(), now=60.0)
        async with connected(store_factory) as other:  # another process's view
            snapshot = await other.load()
        assert ScheduleTemplate.from_dict(snapshot.templates["nightly"]) == template()
        assert snapshot.states["nightly"].last_fire == 50.0
        assert not snapshot.states["nightly"].paused
        assert await store.remove_template("nightly")
        assert not await store.remove_template("nightly")
        snapshot = await store.load()
        assert "nightly" not in snapshot.templates and "nightly" not in snapshot.states


async def test_pause_and_resume(store_factory: StoreFactory) -> None:
    async with connected(store_factory) as store:
        await store.set_paused("code-template", True, now=10.0)  # no state yet
        state = (await store.load()).states["code-template"]
        assert state.paused and state.last_fire == 10.0
        await store.claim("code-template", 20.0)
        await store.set_paused("code-template", False, now=15.0)  # cursor never goes back
        state = (await store.load()).states["code-template"]
        assert not state.paused and state.last_fire == 20.0
        await store.set_paused("code-template", True, now=30.0)
        await store.set_paused("code-template", False, now=90.0)  # skips the pause's ticks
        assert (await store.load()).states["code-template"].last_fire == 90.0


async def test_a_restarted_scheduler_resumes_from_the_shared_cursor(
    store_factory: StoreFactory,
) -> None:
    registry = ScheduleRegistry()

    @registry.scheduled(cron="0 * * * *", name="hourly", catch_up=CatchUp.ALL, catch_up_limit=2)
    def hourly() -> None: ...

    def at(hour: int, minute: int = 0) -> float:
        return datetime(2024, 5, 1, hour, minute, tzinfo=UTC).timestamp()

    now = at(9, 30)
    provider = TaskProvider(queue=MemoryTaskQueue())
    first = TaskScheduler(
        provider, store=store_factory(), registry=registry, clock=lambda: now, attach=False
    )
    await first.run_due()
    now = at(10, 0) + 1
    assert [t.fire_time for t in await first.run_due()] == [at(10)]
    await first.disconnect()
    now = at(14, 10)  # down for four hours: 11, 12, 13, 14 missed; the cap keeps 2
    second = TaskScheduler(
        provider, store=store_factory(), registry=registry, clock=lambda: now, attach=False
    )
    assert [t.fire_time for t in await second.run_due()] == [at(13), at(14)]
    assert await second.run_due() == []
    await second.disconnect()


async def test_unreachable_servers_fail_with_redacted_urls() -> None:
    stores: list[TemplateStore] = [
        RedisTemplateStore("redis://:hunter2@127.0.0.1:1/0"),
        PostgresTemplateStore("postgresql://app:hunter2@127.0.0.1:1/db"),
    ]
    for store in stores:
        with pytest.raises(BackendConnectionError) as caught:
            await store.connect()
        assert "hunter2" not in str(caught.value)
        assert "***" in str(caught.value)
        assert "hunter2" not in repr(store)


def test_default_store_follows_the_primary_backend(redis_url: str, postgres_dsn: str) -> None:
    from lexigram.tasks.postgres import PostgresTaskQueue
    from lexigram.tasks.redis import RedisTaskQueue
    from lexigram.tasks.scheduler import MemoryTemplateStore, default_store

    on_redis = default_store(RedisTaskQueue(redis_url=redis_url))
    assert isinstance(on_redis, RedisTemplateStore) and on_redis.redis_url == redis_url
    on_postgres = default_store(PostgresTaskQueue(postgres_dsn=postgres_dsn, schema="jobs"))
    assert isinstance(on_postgres, PostgresTemplateStore)
    assert (on_postgres.postgres_dsn, on_postgres.schema) == (postgres_dsn, "jobs")
    assert isinstance(default_store(MemoryTaskQueue()), MemoryTemplateStore)
