"""CronSchedule: wall-clock cron in a timezone, across DST changes."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from lexigram.tasks.scheduler import CronSchedule, InvalidScheduleError

BERLIN = ZoneInfo("Europe/Berlin")


def at(*fields: int, tz: ZoneInfo = BERLIN, fold: int = 0) -> float:
    return datetime(*fields, tzinfo=tz, fold=fold).timestamp()  # type: ignore[arg-type,misc]


def fires_between(schedule: CronSchedule, start: float, end: float) -> list[datetime]:
    times, instant = [], start
    while (instant := schedule.next_after(instant)) <= end:
        times.append(schedule.local(instant))
    return times


def utc(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%m-%d %H:%M")


def test_daily_0230_berlin_fires_once_on_spring_forward_day() -> None:
    schedule = CronSchedule("30 2 * * *", "Europe/Berlin")
    fired = fires_between(schedule, at(2024, 3, 30, 12), at(2024, 4, 1, 12))
    # 31 March 2024: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist that
    # day; it fires once, when the clock jumps.
    assert [utc(t) for t in fired] == ["03-31 01:00", "04-01 00:30"]
    assert [t.strftime("%d %H:%M %Z") for t in fired] == ["31 03:00 CEST", "01 02:30 CEST"]


def test_daily_0230_berlin_fires_once_on_fall_back_day() -> None:
    schedule = CronSchedule("30 2 * * *", "Europe/Berlin")
    fired = fires_between(schedule, at(2024, 10, 26, 12), at(2024, 10, 28, 12))
    # 27 October 2024: 03:00 CEST goes back to 02:00 CET, 02:30 happens twice;
    # a schedule naming its hour fires at the first.
    assert [utc(t) for t in fired] == ["10-27 00:30", "10-28 01:30"]
    assert [t.strftime("%d %H:%M %Z") for t in fired] == ["27 02:30 CEST", "28 02:30 CET"]


def test_utc_template_beside_it_is_unaffected() -> None:
    schedule = CronSchedule("30 2 * * *", "UTC")
    spring = fires_between(schedule, at(2024, 3, 30, 12), at(2024, 4, 1, 12))
    autumn = fires_between(schedule, at(2024, 10, 26, 12), at(2024, 10, 28, 12))
    assert [utc(t) for t in spring] == ["03-31 02:30", "04-01 02:30"]
    assert [utc(t) for t in autumn] == ["10-27 02:30", "10-28 02:30"]


def test_interval_schedules_keep_elapsed_time_through_the_repeated_hour() -> None:
    schedule = CronSchedule("*/30 * * * *", "Europe/Berlin")
    fired = fires_between(schedule, at(2024, 10, 27, 1, 15), at(2024, 10, 27, 3, 45))
    assert [utc(t) for t in fired] == [
        "10-26 23:30",
        "10-27 00:00",
        "10-27 00:30",
        "10-27 01:00",  # 02:00 CET, second pass
        "10-27 01:30",
        "10-27 02:00",
        "10-27 02:30",
    ]


def test_interval_schedules_skip_the_missing_hour_without_bunching() -> None:
    schedule = CronSchedule("*/30 * * * *", "Europe/Berlin")
    fired = fires_between(schedule, at(2024, 3, 31, 1, 15), at(2024, 3, 31, 3, 45))
    assert [t.strftime("%H:%M %Z") for t in fired] == [
        "01:30 CET",
        "03:00 CEST",
        "03:30 CEST",
    ]


def test_next_after_from_inside_the_repeated_hour() -> None:
    schedule = CronSchedule("*/30 * * * *", "Europe/Berlin")
    first_pass = at(2024, 10, 27, 2, 40)
    second_pass = at(2024, 10, 27, 2, 10, fold=1)
    assert utc(schedule.local(schedule.next_after(first_pass))) == "10-27 01:00"
    assert utc(schedule.local(schedule.next_after(second_pass))) == "10-27 01:30"
    named_hour = CronSchedule("*/20 2 * * *", "Europe/Berlin")
    assert schedule.local(named_hour.next_after(second_pass)).day == 28


def test_matches_croniter_where_there_is_no_dst() -> None:
    rng = random.Random(7)
    for expression in ["*/7 * * * *", "0 9-17 * * 1-5", "15 3 1 * *", "*/10 * * * * *"]:
        schedule = CronSchedule(expression, "Asia/Tokyo")
        for _ in range(50):
            start = rng.uniform(1.6e9, 1.8e9)
            expected = croniter(expression, datetime.fromtimestamp(start, ZoneInfo("Asia/Tokyo")))
            assert schedule.next_after(start) == expected.get_next(float)


def test_seconds_field_is_the_sixth() -> None:
    schedule = CronSchedule("* * * * * */15")  # 22:13:20 UTC -> :30, :45, :00
    assert schedule.next_times(1_700_000_000.0, 3) == [
        1_700_000_010.0,
        1_700_000_025.0,
        1_700_000_040.0,
    ]


def test_due_times_keeps_the_latest_and_is_cheap_for_an_old_cursor() -> None:
    schedule = CronSchedule("* * * * * *")
    began = time.perf_counter()
    times, dropped = schedule.due_times(1_000.0, 1_700_000_000.5, keep=3)
    assert time.perf_counter() - began < 0.5
    assert times == [1_699_999_998.0, 1_699_999_999.0, 1_700_000_000.0]
    assert dropped
    assert schedule.due_times(1_699_999_998.0, 1_700_000_000.5, keep=5) == (
        [1_699_999_999.0, 1_700_000_000.0],
        False,
    )
    assert schedule.due_times(1_700_000_000.0, 1_700_000_000.5, keep=1) == ([], False)


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("61 * * * *", "out of range"),
        ("every day", "invalid cron expression 'every day'"),
        ("* * *", "5 fields"),
        ("", "non-empty"),
    ],
)
def test_invalid_expressions_are_refused_with_the_expression(
    expression: str, fragment: str
) -> None:
    with pytest.raises(InvalidScheduleError, match=fragment):
        CronSchedule(expression)


def test_unknown_timezone_is_refused() -> None:
    with pytest.raises(InvalidScheduleError, match="unknown timezone 'Mars/Olympus'"):
        CronSchedule("0 * * * *", "Mars/Olympus")


def test_aliases_and_hashed_fields() -> None:
    assert CronSchedule("@daily").next_after(at(2024, 1, 1, 12, tz=ZoneInfo("UTC"))) == at(
        2024, 1, 2, tz=ZoneInfo("UTC")
    )
    one = CronSchedule("H 3 * * *", hash_id="report-a")
    two = CronSchedule("H 3 * * *", hash_id="report-a")
    assert one.next_after(0) == two.next_after(0)
    # Only explicit H fields are hashed: aliases and day names keep their meaning.
    named = CronSchedule("@daily", hash_id="report-a")
    assert named.next_after(at(2024, 1, 1, 12, tz=ZoneInfo("UTC"))) == at(
        2024, 1, 2, tz=ZoneInfo("UTC")
    )
    thursday = CronSchedule("0 9 * * THU", hash_id="report-a")
    assert thursday.local(thursday.next_after(0)).strftime("%a %H:%M") == "Thu 09:00"
