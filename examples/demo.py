"""A worker processing real jobs on the memory backend, printing what happens.

Run it with ``python3 scripts/dev.py demo`` (or ``python examples/demo.py``
once the packages are installed).
"""

from __future__ import annotations

import asyncio
import random
import time

from lexigram.tasks import (
    MemoryTaskQueue,
    TaskCompletedEvent,
    TaskDeadLetteredEvent,
    TaskProvider,
    TaskRetryingEvent,
    TaskStartedEvent,
)

queue = MemoryTaskQueue()
provider = TaskProvider(queue=queue, worker_count=4)
started = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - started:5.2f}s] {text}", flush=True)


@provider.task(max_retries=2, timeout=5)
async def resize_image(name: str, width: int) -> str:
    await asyncio.sleep(random.uniform(0.05, 0.2))  # pretend to work
    return f"{name}@{width}px"


@provider.task
def count_words(text: str) -> int:
    """A plain function: it runs in a worker thread."""
    return len(text.split())


flaky_calls = 0


@provider.task(max_retries=3, retry_backoff=0.2)
async def call_flaky_api() -> str:
    global flaky_calls
    flaky_calls += 1
    if flaky_calls < 3:
        raise ConnectionError(f"upstream unavailable (call {flaky_calls})")
    return "ok on call 3"


@provider.task(max_retries=1, retry_backoff=0.1)
async def always_broken() -> None:
    raise ValueError("this task has a bug")


@provider.on(TaskStartedEvent)
def on_start(event: TaskStartedEvent) -> None:
    say(f"start    {event.job.task.split('.')[-1]} (attempt {event.job.attempt})")


@provider.on(TaskCompletedEvent)
def on_done(event: TaskCompletedEvent) -> None:
    name = event.job.task.split(".")[-1]
    say(f"done     {name} -> {event.result!r} in {event.duration * 1000:.0f} ms")


@provider.on(TaskRetryingEvent)
def on_retry(event: TaskRetryingEvent) -> None:
    say(f"retry    {event.job.task.split('.')[-1]} in {event.delay:.2f}s: {event.error_message}")


@provider.on(TaskDeadLetteredEvent)
def on_dead(event: TaskDeadLetteredEvent) -> None:
    say(f"dead     {event.reason}")


async def main() -> None:
    async with provider:
        say("worker pool started: 4 workers on the memory backend")
        images = [await resize_image.enqueue(f"photo{i}.jpg", 640) for i in range(6)]
        words = await count_words.enqueue("the quick brown fox jumps over the lazy dog")
        later = await resize_image.options(delay=1.0).enqueue("banner.png", 1200)
        urgent = await resize_image.options(priority=9).enqueue("urgent.png", 64)
        flaky = await call_flaky_api.enqueue()
        broken = await always_broken.enqueue()
        say("enqueued 11 jobs (one delayed by 1s, one with priority 9)")

        for handle in [*images, words, urgent, flaky, later]:
            await handle.result(timeout=10)
        try:
            await broken.result(timeout=10)
        except Exception as exc:
            say(f"result   always_broken raised {type(exc).__name__}: {exc}")
        counts = await queue.counts()
        say(f"queue    ready={counts.ready} delayed={counts.delayed} failed={counts.failed}")
    say("worker pool stopped cleanly")


if __name__ == "__main__":
    asyncio.run(main())
