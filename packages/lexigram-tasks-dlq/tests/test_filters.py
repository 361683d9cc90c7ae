"""FailureFilter is the one declaration of the DLQ's filters: list, count,
replay_many, purge and every ``lexigram-tasks dlq`` command take it, field by field.

The tests read the fields of ``FailureFilter``, so a new field that one of
them does not take fails here.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lexigram.tasks import DeadLetterQueue, MemoryTaskQueue
from lexigram.tasks.dlq import FailureFilter
from lexigram.tasks.dlq.cli import register
from lexigram.tasks.dlq.testing import make_record

DOCS = Path(__file__).resolve().parents[3] / "docs"
T0 = 1_700_000_000.0
#: A value for each field that matches exactly one of the records below.
CRITERIA = {
    "task": "b.task",
    "queue": "q2",
    "error_type": "KeyError",
    "since": T0 + 3,
    "until": T0 + 1,
}


async def dlq_with_records() -> DeadLetterQueue:
    dlq = DeadLetterQueue()
    for index, (task, queue, error_type) in enumerate(
        [
            ("a.task", "q1", "ValueError"),
            ("b.task", "q1", "ValueError"),
            ("a.task", "q2", "ValueError"),
            ("a.task", "q1", "KeyError"),
        ]
    ):
        await dlq.add_record(
            make_record(
                record_id=f"r{index}",
                task=task,
                queue=queue,
                error_type=error_type,
                failed_at=T0 + index,
            )
        )
    return dlq


def targets() -> dict[str, MemoryTaskQueue]:
    return {name: MemoryTaskQueue(queue_name=name) for name in ("q1", "q2")}


def test_every_field_is_covered_here() -> None:
    assert set(CRITERIA) == set(FailureFilter.names())


@pytest.mark.parametrize("name", FailureFilter.names())
async def test_list_and_count_take_each_field_as_keyword_or_where(name: str) -> None:
    dlq = await dlq_with_records()
    value = CRITERIA[name]
    where = FailureFilter(**{name: value})
    by_keyword = [r.id for r in await dlq.list(**{name: value})]
    assert by_keyword == [r.id for r in await dlq.list(where=where)]
    assert len(by_keyword) == 1 if name != "until" else by_keyword == ["r0"]
    assert await dlq.count(**{name: value}) == await dlq.count(where=where) == len(by_keyword)


@pytest.mark.parametrize("name", FailureFilter.names())
async def test_purge_and_replay_many_take_each_field_as_keyword_or_where(name: str) -> None:
    value = CRITERIA[name]
    purged = await dlq_with_records()
    assert await purged.purge(where=FailureFilter(**{name: value})) == 1
    assert await purged.count(**{name: value}) == 0 and await purged.count() == 3
    replayed = await dlq_with_records()
    report = await replayed.replay_many(targets(), **{name: value})
    assert report.total == 1 and await replayed.count(**{name: value}) == 0


async def test_keywords_narrow_a_where_and_datetimes_are_accepted() -> None:
    dlq = await dlq_with_records()
    where = FailureFilter(task="a.task")
    since = datetime.fromtimestamp(T0 + 2, UTC)
    assert [r.id for r in await dlq.list(where=where, since=since)] == ["r2", "r3"]
    assert [r.id for r in await dlq.list(where=where, task="b.task")] == ["r1"]  # keyword wins
    assert FailureFilter.of(since=since) == FailureFilter(since=T0 + 2)


@pytest.mark.parametrize("method", ["list", "count", "purge"])
async def test_an_unknown_filter_keyword_is_a_type_error(method: str) -> None:
    dlq = await dlq_with_records()
    with pytest.raises(TypeError, match=rf"{method}\(\) got an unexpected keyword argument 'taks'"):
        await getattr(dlq, method)(taks="a.task")
    with pytest.raises(TypeError, match="'error'"):
        await dlq.replay_many(targets(), error="ValueError")
    assert await dlq.count() == 4


def test_every_dlq_command_that_selects_has_a_flag_per_field() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    for command in ("list", "replay", "purge"):
        argv = ["dlq", command, "--task", "t", "--queue", "q", "--error-type", "E"]
        argv += ["--since", "2024-05-01T00:00", "--until", "1h"]
        args = parser.parse_args(argv)
        assert all(getattr(args, name) is not None for name in FailureFilter.names()), command


def test_the_docs_name_every_filter_and_flag() -> None:
    page = (DOCS / "dead-letter-queue.md").read_text()
    flags = re.search(r"Filters: (.*?)\(an", page, re.DOTALL)
    assert flags is not None
    assert re.findall(r"`--([-\w]+)`", flags[1]) == [
        n.replace("_", "-") for n in FailureFilter.names()
    ]
    for name in FailureFilter.names():
        assert f"`{name}`" in page
