"""The overview's readings: throughput from the workers' counters, slow counts in the background."""

from __future__ import annotations

import asyncio
import time

from lexigram.tasks import MemoryTaskQueue, TaskProvider
from lexigram.tasks.control import WorkerInfo
from lexigram.tasks.dashboard._charts import failure_rate_chart, throughput_chart
from lexigram.tasks.dashboard._history import Sample, Sampler, Throughput
from lexigram.tasks.protocol import QueueCounts

T0 = 1_700_000_000.0 - 1_700_000_000.0 % 60  # the start of a minute


def worker(worker_id: str, done: int, failed: int, started_at: float = 0.0) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id,
        host="h",
        pid=1,
        version="0",
        backends=["default"],
        concurrency=1,
        started_at=started_at,
        heartbeat_at=started_at,
        done=done,
        failed=failed,
    )


def test_counts_what_the_counters_grew_by_per_minute() -> None:
    hour = Throughput()
    hour.add([worker("a", 100, 10)], T0)  # the first reading is the baseline
    hour.add([worker("a", 130, 12)], T0 + 20)
    hour.add([worker("a", 150, 12)], T0 + 70)
    minutes = hour.hour(T0 + 70)
    assert len(minutes) == 60
    assert [(m.done, m.failed) for m in minutes[-2:]] == [(30, 2), (20, 0)]
    assert minutes[-2].failure_rate == 2 / 32


def test_new_and_restarted_workers_count_from_zero_and_old_minutes_drop_out() -> None:
    hour = Throughput()
    hour.add([worker("a", 5, 0)], T0)
    hour.add([worker("a", 2, 1), worker("b", 3, 0, started_at=T0 + 1)], T0 + 10)
    assert (hour.hour(T0 + 10)[-1].done, hour.hour(T0 + 10)[-1].failed) == (5, 1)
    later = T0 + 3600
    hour.add([worker("a", 2, 1)], later)  # b has gone
    assert sum(m.total for m in hour.hour(later)) == 0


def test_charts_say_what_they_show() -> None:
    hour = Throughput()
    hour.add([worker("a", 0, 0)], T0)
    hour.add([worker("a", 9, 3)], T0 + 5)
    minutes = hour.hour(T0 + 5)
    runs = throughput_chart(minutes)
    assert runs.caption == "12 runs in the last hour, peak 12/min"
    assert {bar.kind for bar in runs.bars} == {"done", "failed"}
    assert failure_rate_chart(minutes).caption == "failure rate over the hour: 25.0%"
    assert failure_rate_chart(hour.hour(T0 + 7200)).caption.endswith("no runs")


class SlowCounts(MemoryTaskQueue):
    """A queue whose counts take ``delay`` seconds, like a large unvacuumed table."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.calls = 0

    async def counts(self) -> QueueCounts:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return await super().counts()


async def test_a_slow_count_never_holds_a_page_and_is_read_less_often() -> None:
    queue = SlowCounts(delay=0.5)
    sampler = Sampler(TaskProvider(queue=queue), refresh=0.01, workers_every=0.01)
    began = time.monotonic()
    first = await sampler.current()
    assert first.pending and time.monotonic() - began < 0.4  # waited first_wait, not 0.5 s
    ready = await wait_for_sample(sampler)
    assert "default" in ready.counts
    assert sampler.interval >= 5  # ten times the half second the reading took
    for _ in range(20):
        assert (await sampler.current()) is ready  # no new reading: not due yet
    assert queue.calls == 1


async def wait_for_sample(sampler: Sampler) -> Sample:
    deadline = time.monotonic() + 5
    while (sample := await sampler.current()).pending:
        assert time.monotonic() < deadline, "the first reading never finished"
        await asyncio.sleep(0.02)
    return sample
