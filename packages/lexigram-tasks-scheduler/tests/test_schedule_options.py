"""ScheduleOptions is the one declaration of the schedule options: ``@scheduled``,
``TaskScheduler.add`` and ``schedule add`` take every field, and the docs list it.

The tests read the fields of ``ScheduleOptions``, so a new field that one of
them does not take fails here.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest

from lexigram.tasks import MemoryTaskQueue, TaskProvider
from lexigram.tasks.scheduler import (
    MemoryTemplateStore,
    ScheduleOptions,
    ScheduleRegistry,
    TaskScheduler,
)
from lexigram.tasks.scheduler.cli import option_overrides, register

DOCS = Path(__file__).resolve().parents[3] / "docs"

#: A valid value other than the default for every option.
CHANGED: dict[str, Any] = {
    "timezone": "Europe/Berlin",
    "args": (1, "two"),
    "kwargs": {"region": "eu"},
    "backend": "default",
    "priority": 5,
    "jitter": 2.5,
    "catch_up": "all",
    "catch_up_limit": 3,
    "misfire_grace": 12.0,
    "description": "nightly numbers",
}


def handler(a: int, b: str, region: str) -> None:
    """Docstring line."""


def test_every_option_is_covered_here() -> None:
    assert set(CHANGED) == set(ScheduleOptions.names())


def chosen(template: Any) -> dict[str, Any]:
    return {name: getattr(template, name) for name in ScheduleOptions.names()}


def expected() -> dict[str, Any]:
    return chosen(ScheduleOptions(**CHANGED))


def test_scheduled_takes_every_option_as_keyword_or_options() -> None:
    registry = ScheduleRegistry()
    registry.scheduled(cron="0 * * * *", name="by-keywords", **CHANGED)(handler)
    registry.scheduled(cron="0 * * * *", name="by-options", options=ScheduleOptions(**CHANGED))(
        handler
    )
    for name in ("by-keywords", "by-options"):
        entry = registry.get(name)
        assert entry is not None
        assert {**chosen(entry.template), "catch_up": entry.template.catch_up.value} == {
            **expected(),
            "catch_up": "all",
        }


async def test_scheduler_add_takes_every_option_as_keyword_or_options() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue())
    provider.task(name="report")(handler)
    scheduler = TaskScheduler(provider, store=MemoryTemplateStore(), registry=ScheduleRegistry())
    by_keywords = await scheduler.add("a", "report", "0 * * * *", **CHANGED)
    by_options = await scheduler.add("b", "report", "0 * * * *", options=ScheduleOptions(**CHANGED))
    assert chosen(by_keywords) == chosen(by_options) == chosen(ScheduleOptions(**CHANGED))


async def test_keywords_win_over_options_and_unknown_keywords_are_type_errors() -> None:
    registry = ScheduleRegistry()
    options = ScheduleOptions(jitter=5, timezone="Europe/Berlin")
    registry.scheduled(cron="0 * * * *", name="x", options=options, jitter=0)(lambda: None)
    entry = registry.get("x")
    assert entry is not None
    assert (entry.template.jitter, entry.template.timezone) == (0, "Europe/Berlin")
    with pytest.raises(TypeError, match=r"scheduled\(\) got an unexpected keyword .*'jiter'"):
        registry.scheduled(cron="0 * * * *", jiter=5)
    provider = TaskProvider(queue=MemoryTaskQueue())
    provider.task(name="report")(handler)
    scheduler = TaskScheduler(provider, store=MemoryTemplateStore(), registry=ScheduleRegistry())
    with pytest.raises(TypeError, match=r"add\(\) got an unexpected keyword .*'tz'"):
        await scheduler.add("a", "report", "0 * * * *", tz="UTC")


def test_schedule_add_has_a_flag_per_option() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    argv = ["schedule", "add", "n", "--task", "t", "--cron", "0 * * * *"]
    for name, value in CHANGED.items():
        text = json.dumps(list(value) if isinstance(value, tuple) else value)
        argv += ["--" + name.replace("_", "-"), value if isinstance(value, str) else text]
    overrides = option_overrides(parser.parse_args(argv))
    assert chosen(ScheduleOptions(**{**overrides, "args": tuple(overrides["args"])})) == (
        chosen(ScheduleOptions(**CHANGED))
    )
    bare = parser.parse_args(["schedule", "add", "n", "--task", "t", "--cron", "0 * * * *"])
    assert option_overrides(bare) == {}  # the defaults come from ScheduleOptions


def test_the_docs_list_every_option_and_flag() -> None:
    page = (DOCS / "scheduling.md").read_text()
    section = page[page.index("## Options") :]
    table = section[: section.index("\n\n", section.index("|---"))]
    documented = {
        n for row in re.findall(r"^\| ([^|]+) \|", table, re.M) for n in re.findall(r"`(\w+)`", row)
    }
    assert set(ScheduleOptions.names()) <= documented
    flags = re.findall(r"`(--[-\w]+)`", section[: section.index("```python")])
    assert flags == ["--" + n.replace("_", "-") for n in ScheduleOptions.names()]
