"""Small bar charts as inline SVG: no script, no external file, readable with JS off."""

from __future__ import annotations

import time
from dataclasses import dataclass

from lexigram.tasks.dashboard._history import Minute

WIDTH = 360
HEIGHT = 64


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str
    kind: str


@dataclass(frozen=True, slots=True)
class Chart:
    """What a template draws: bars in a ``WIDTH`` x ``HEIGHT`` box and a caption."""

    bars: list[Bar]
    caption: str
    width: int = WIDTH
    height: int = HEIGHT


def _label(minute: Minute) -> str:
    return time.strftime("%H:%M", time.gmtime(minute.start)) + " UTC"


def throughput_chart(minutes: list[Minute]) -> Chart:
    """Runs per minute, the failed part stacked on top of the done part."""
    peak = max((m.total for m in minutes), default=0) or 1
    step = WIDTH / max(len(minutes), 1)
    bars: list[Bar] = []
    for i, m in enumerate(minutes):
        done_h = HEIGHT * m.done / peak
        failed_h = HEIGHT * m.failed / peak
        x = i * step
        label = f"{_label(m)}: {m.done} done, {m.failed} failed"
        if m.done:
            bars.append(Bar(x, HEIGHT - done_h, step * 0.8, done_h, label, "done"))
        if m.failed:
            bars.append(Bar(x, HEIGHT - done_h - failed_h, step * 0.8, failed_h, label, "failed"))
    total = sum(m.total for m in minutes)
    return Chart(bars, f"{total} runs in the last hour, peak {peak if total else 0}/min")


def failure_rate_chart(minutes: list[Minute]) -> Chart:
    """The share of runs that failed, per minute (0 to 100 %)."""
    step = WIDTH / max(len(minutes), 1)
    bars: list[Bar] = []
    for i, m in enumerate(minutes):
        rate = m.failure_rate
        if rate is None:
            continue
        h = max(HEIGHT * rate, 1.0)
        label = f"{_label(m)}: {rate:.0%} of {m.total} runs failed"
        bars.append(Bar(i * step, HEIGHT - h, step * 0.8, h, label, "failed"))
    done = sum(m.done for m in minutes)
    failed = sum(m.failed for m in minutes)
    overall = f"{failed / (done + failed):.1%}" if done + failed else "no runs"
    return Chart(bars, f"failure rate over the hour: {overall}")
