"""The overview's hour of throughput, from the workers' done/failed counters."""

from __future__ import annotations

from lexigram.tasks.control import WorkerInfo
from lexigram.tasks.dashboard._charts import failure_rate_chart, throughput_chart
from lexigram.tasks.dashboard._history import Throughput

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
