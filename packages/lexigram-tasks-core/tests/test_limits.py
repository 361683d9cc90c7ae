"""Concurrency limits per task and per key, and rate limits per key, on the memory backend."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import pytest

from lexigram.tasks import ConfigurationError, MemoryTaskQueue, TaskFailedError, TaskProvider
from lexigram.tasks.concurrency import LocalConcurrencyLimiter


class Running:
    """Counts the runs in progress per key and remembers the most seen at once."""

    def __init__(self) -> None:
        self.now: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.order: list[str] = []

    async def run(self, key: str, seconds: float) -> None:
        self.order.append(key)
        self.now[key] += 1
        self.now["*"] += 1
        self.most[key] = max(self.most[key], self.now[key])
        self.most["*"] = max(self.most["*"], self.now["*"])
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now[key] -= 1
            self.now["*"] -= 1


def test_options_are_checked_when_the_task_is_declared() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())
    with pytest.raises(ValueError, match="concurrency_key and max_concurrency_per_key go together"):
        provider.task(max_concurrency_per_key=2)(lambda: None)
    with pytest.raises(ValueError, match="go together"):
        provider.task(concurrency_key=lambda t: t)(lambda t: None)
    with pytest.raises(ValueError, match="max_concurrency must be >= 1"):
        provider.task(max_concurrency=0)(lambda: None)
    with pytest.raises(TypeError, match="max_concurrency_per_key must be an int"):
        provider.task(concurrency_key=lambda t: t, max_concurrency_per_key=1.5)(  # type: ignore[arg-type]
            lambda t: None
        )
    with pytest.raises(TypeError, match="concurrency_key must be a function"):
        provider.task(concurrency_key="tenant", max_concurrency_per_key=1)(  # type: ignore[arg-type]
            lambda t: None
        )
    with pytest.raises(ValueError, match="rate_limit_key needs a rate_limit"):
        provider.task(name="r", rate_limit_key=lambda t: t)(lambda t: None)


async def test_local_limiter_takes_all_or_none_and_frees_lapsed_slots() -> None:
    limiter = LocalConcurrencyLimiter()
    assert await limiter.acquire([("a", 1), ("b", 2)], "h1", 60)
    assert not await limiter.acquire([("b", 2), ("a", 1)], "h2", 60)  # a is full: b not taken
    assert await limiter.acquire([("b", 2)], "h3", 60)
    assert not await limiter.acquire([("b", 2)], "h4", 60)
    await limiter.release(["a", "b"], "h1")
    assert await limiter.acquire([("a", 1)], "h2", 0.05)
    await limiter.extend([("a", "h2")], 60)
    await asyncio.sleep(0.1)
    assert not await limiter.acquire([("a", 1)], "h5", 60)  # extended: still held
    await limiter.extend([("a", "h2")], 0.01)
    await asyncio.sleep(0.05)
    assert await limiter.acquire([("a", 1)], "h5", 60)  # h2's lease lapsed


async def test_max_concurrency_caps_the_runs_of_a_task_at_once() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue(), worker_count=8)
    running = Running()

    @provider.task(name="capped", max_concurrency=2)
    async def capped(n: int) -> int:
        await running.run("capped", 0.01)
        return n

    async with provider:
        handles = [await capped.enqueue(n) for n in range(20)]
        assert [await h.result(timeout=20) for h in handles] == list(range(20))
    assert running.most["capped"] == 2


async def test_per_key_limit_holds_and_other_keys_go_on() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue(), worker_count=8)
    running = Running()

    @provider.task(
        name="per_tenant",
        concurrency_key=lambda tenant_id, **_: tenant_id,
        max_concurrency_per_key=2,
        max_retries=0,
    )
    async def per_tenant(tenant_id: str, n: int) -> int:
        await running.run(tenant_id, 0.02)
        return n

    async with provider:
        a = [await per_tenant.enqueue("a", n) for n in range(30)]
        b = [await per_tenant.enqueue(tenant_id="b", n=n) for n in range(5)]
        for handle in a + b:
            await handle.result(timeout=30)  # max_retries=0: a put-back used no attempt
    assert running.most["a"] == 2
    assert running.most["b"] == 2
    # B's jobs, enqueued after all of A's, started before A's backlog drained.
    assert max(i for i, key in enumerate(running.order) if key == "b") < len(running.order) - 5
    assert running.most["*"] == 4


async def test_a_key_function_with_the_tasks_parameters_keys_every_way_of_passing_them() -> None:
    # A key function with the task's own parameters is called with the job's
    # positional arguments directly: the same key as by name, defaults included.
    provider = TaskProvider(queue=MemoryTaskQueue(), worker_count=6)
    running = Running()

    @provider.task(
        name="same_parameters",
        concurrency_key=lambda tenant, region="eu": f"{tenant}@{region}",
        max_concurrency_per_key=1,
        max_retries=0,
    )
    async def same_parameters(tenant: str, region: str = "eu") -> None:
        await running.run(f"{tenant}@{region}", 0.02)

    async with provider:
        handles = [await same_parameters.enqueue("a") for _ in range(3)]
        handles += [await same_parameters.enqueue("a", "eu") for _ in range(3)]
        handles += [await same_parameters.enqueue(tenant="a") for _ in range(3)]
        handles += [await same_parameters.enqueue("b", region="us") for _ in range(3)]
        for handle in handles:
            await handle.result(timeout=30)
    assert running.most["a@eu"] == 1
    assert running.most["b@us"] == 1
    assert Counter(running.order) == {"a@eu": 9, "b@us": 3}


async def test_a_failing_or_bad_key_function_fails_the_job_clearly() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue(), worker_count=2)

    @provider.task(name="raising", concurrency_key=lambda: 1 / 0, max_concurrency_per_key=1)
    async def raising() -> None:
        raise AssertionError("must not run")

    @provider.task(name="bad", concurrency_key=lambda x: [x], max_concurrency_per_key=1)
    async def bad(x: int) -> None:
        raise AssertionError("must not run")

    async with provider:
        with pytest.raises(TaskFailedError, match="concurrency_key of task 'raising' raised"):
            await (await raising.enqueue()).result(timeout=10)
        with pytest.raises(TaskFailedError, match=r"returned \[1\] \(list\); it must return"):
            await (await bad.enqueue(1)).result(timeout=10)


async def test_rate_limit_key_paces_each_key_on_its_own() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue(), worker_count=9)
    started: list[tuple[str, float]] = []

    @provider.task(name="paced", rate_limit="5/s", rate_limit_key=lambda key: key)
    async def paced(key: str) -> None:
        started.append((key, asyncio.get_running_loop().time()))

    async with provider:
        handles = [await paced.enqueue(k) for k in ("x", "y", "z") for _ in range(3)]
        for handle in handles:
            await handle.result(timeout=20)
    keys = [key for key, _ in started]
    assert Counter(keys) == {"x": 3, "y": 3, "z": 3}
    # Enqueued x, x, x, y, ..., a slot each: y and z start before x's second run.
    assert set(keys[:3]) == {"x", "y", "z"}
    for key in "xyz":
        times = [at for k, at in started if k == key]
        assert all(b - a >= 0.15 for a, b in itertools.pairwise(times))


def test_concurrency_limiter_from_configuration() -> None:
    backend = {"type": "memory"}
    provider = TaskProvider.from_config(
        {"tasks": {"backend": backend, "concurrency_limiter": {"type": "local"}}}
    )
    assert isinstance(provider.concurrency_limiter, LocalConcurrencyLimiter)
    with pytest.raises(ConfigurationError, match="unknown concurrency limiter type 'nope'"):
        TaskProvider.from_config(
            {"tasks": {"backend": backend, "concurrency_limiter": {"type": "nope"}}}
        )
