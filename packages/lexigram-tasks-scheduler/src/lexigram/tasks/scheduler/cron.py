"""Cron expressions evaluated on a timezone's wall clock, correct across DST changes.

croniter walks *wall-clock* (naive) times; this module maps each matching
wall-clock time to real instants itself, because a naive walk alone gets the
two DST transitions wrong:

* **Spring forward** (the clock jumps 02:00 -> 03:00): a wall-clock time in
  the gap does not exist. It fires once, at the instant the clock jumps
  (03:00), like Vixie cron. Several gap times fire once together.
* **Fall back** (03:00 -> 02:00, the hour repeats): a wall-clock time in the
  repeated hour exists twice. A schedule that names its hours (``30 2 * * *``)
  fires once, at the first occurrence. A schedule whose hour field is ``*``
  (``*/15 * * * *``, ``@hourly``) measures elapsed time, so it also fires in
  the repeated hour.

All instants are Unix timestamps (float seconds).
"""

from __future__ import annotations

import re
import threading
from collections import deque
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from lexigram.tasks.scheduler.errors import InvalidScheduleError

_ONE_SECOND = timedelta(seconds=1)
#: A Jenkins-style hashed field: ``H``, ``H(0-29)``, ``H/15`` (not the H of ``THU``).
_HASHED_FIELD = re.compile(r"(?:^|[\s,])H(?:$|[\s,(/])")
#: How many steps the forward scan may take before jumping close to "now".
_SCAN_LIMIT = 64


def resolve_timezone(value: str | tzinfo | None) -> ZoneInfo:
    """A :class:`ZoneInfo` from an IANA name (``"Europe/Berlin"``) or a ZoneInfo.

    Raises :class:`InvalidScheduleError` for an unknown name.
    """
    if value is None or value is UTC:
        return ZoneInfo("UTC")
    if isinstance(value, ZoneInfo):
        return value
    if not isinstance(value, str):
        raise InvalidScheduleError(
            f"timezone must be an IANA name such as 'Europe/Berlin' or a ZoneInfo, got {value!r}"
        )
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidScheduleError(
            f"unknown timezone {value!r}: use an IANA name such as 'UTC', 'Europe/Berlin' "
            "or 'America/New_York' (on Windows, pip install tzdata)"
        ) from exc


class CronSchedule:
    """A cron expression on the wall clock of one timezone.

    Five fields (minute hour day month weekday), a sixth for seconds
    (``"*/5 * * * * *"`` fires every 5 seconds, croniter's convention puts
    seconds last), aliases such as ``@daily``, and ``H`` hashed fields
    (spread by ``hash_id``, normally the template name).
    """

    def __init__(
        self, expression: str, timezone: str | tzinfo | None = "UTC", *, hash_id: str | None = None
    ) -> None:
        if not isinstance(expression, str) or not expression.strip():
            raise InvalidScheduleError(
                f"cron expression must be a non-empty string, got {expression!r}"
            )
        self.expression = " ".join(expression.split())
        self.timezone = resolve_timezone(timezone)
        # croniter hashes @daily & co. when given a hash_id; only pass it for explicit H fields.
        hashed = hash_id is not None and _HASHED_FIELD.search(self.expression) is not None
        self._hash_id = hash_id.encode() if hash_id and hashed else None
        try:
            parsed = croniter(self.expression, datetime(2000, 1, 1), hash_id=self._hash_id)
        except (CroniterError, ValueError, TypeError, KeyError) as exc:
            raise InvalidScheduleError(
                f"invalid cron expression {expression!r}: {exc} "
                "(expected 5 fields 'minute hour day month weekday', "
                "or 6 with seconds last, or an alias such as '@daily')"
            ) from exc
        expanded: list[list[Any]] = parsed.expanded
        self._hour_is_wildcard = expanded[1] == ["*"]
        self._iter = parsed
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CronSchedule({self.expression!r}, timezone={self.timezone.key!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CronSchedule)
            and other.expression == self.expression
            and other.timezone.key == self.timezone.key
        )

    def __hash__(self) -> int:
        return hash((self.expression, self.timezone.key))

    # -- public views ----------------------------------------------------------

    def local(self, instant: float) -> datetime:
        """``instant`` as an aware datetime in this schedule's timezone."""
        return datetime.fromtimestamp(instant, self.timezone)

    def next_after(self, instant: float) -> float:
        """The first fire time strictly after ``instant``."""
        loc = self.local(instant)
        naive = loc.replace(tzinfo=None)
        if loc.fold == 1:
            # Second pass through a repeated hour: wall-clock matches in the rest of
            # the repeated hour already fired at their first occurrence.
            candidate = naive
            while True:
                candidate = self._naive_next(candidate)
                if self._kind(candidate) != "ambiguous":
                    return self._first_instant(candidate)
                if self._hour_is_wildcard:
                    return self._instant(candidate, fold=1)
        best = self._first_instant(self._naive_next(naive))
        if self._hour_is_wildcard and self._kind(naive) == "ambiguous":
            # First pass through a repeated hour: its second pass comes after us too.
            start = self._repeat_start(instant)
            first = self._naive_next(start - _ONE_SECOND)
            if self._kind(first) == "ambiguous":
                best = min(best, self._instant(first, fold=1))
        return best

    def next_times(self, after: float, count: int) -> list[float]:
        """The next ``count`` fire times after ``after``."""
        times: list[float] = []
        instant = after
        for _ in range(count):
            instant = self.next_after(instant)
            times.append(instant)
        return times

    def due_times(self, cursor: float, now: float, keep: int) -> tuple[list[float], bool]:
        """The latest ``keep`` fire times in ``(cursor, now]``, oldest first.

        The second value is True when older due fire times were left out.
        Costs a few steps however old ``cursor`` is.
        """
        if keep < 1:
            raise ValueError("keep must be >= 1")
        found: deque[float] = deque(maxlen=keep)
        dropped = False
        instant = cursor
        for _ in range(keep + _SCAN_LIMIT):
            instant = self.next_after(instant)
            if instant > now:
                return list(found), dropped
            dropped = dropped or len(found) == keep
            found.append(instant)
        # Far behind: restart the scan a few fire times before now.
        anchor = self.local(now).replace(tzinfo=None) + _ONE_SECOND
        for _ in range(keep + 1):
            anchor = self._naive_prev(anchor)
        start = max(cursor, self._first_instant(anchor) - 1e-3)
        found.clear()
        instant = start
        while True:
            instant = self.next_after(instant)
            if instant > now:
                return list(found), True
            found.append(instant)

    # -- internals -------------------------------------------------------------

    def _naive_next(self, naive: datetime) -> datetime:
        with self._lock:
            self._iter.set_current(naive, force=True)
            result: datetime = self._iter.get_next(datetime)
        return result

    def _naive_prev(self, naive: datetime) -> datetime:
        with self._lock:
            self._iter.set_current(naive, force=True)
            result: datetime = self._iter.get_prev(datetime)
        return result

    def _instant(self, naive: datetime, fold: int) -> float:
        return naive.replace(tzinfo=self.timezone, fold=fold).timestamp()

    def _kind(self, naive: datetime) -> str:
        """``"normal"``, ``"gap"`` (does not exist) or ``"ambiguous"`` (exists twice)."""
        first = naive.replace(tzinfo=self.timezone, fold=0)
        second = naive.replace(tzinfo=self.timezone, fold=1)
        if first.utcoffset() == second.utcoffset():
            return "normal"
        back = datetime.fromtimestamp(first.timestamp(), self.timezone).replace(tzinfo=None)
        return "ambiguous" if back == naive else "gap"

    def _first_instant(self, naive: datetime) -> float:
        """The first instant showing ``naive`` on the wall clock (the jump, for a gap)."""
        kind = self._kind(naive)
        if kind != "gap":
            return self._instant(naive, fold=0)
        # The clock jumps over ``naive``: find the instant of the jump, to the second.
        low = int(self._instant(naive, fold=1))  # reads before the gap
        high = int(self._instant(naive, fold=0)) + 1  # reads after it
        while high - low > 1:
            middle = (low + high) // 2
            if self.local(middle).replace(tzinfo=None) > naive:
                high = middle
            else:
                low = middle
        return float(high)

    def _repeat_start(self, instant: float) -> datetime:
        """Wall-clock start of the repeated hour that ``instant`` (first pass) is in."""
        offset = self.local(instant).utcoffset()
        low = int(instant)
        high = int(self._instant(self.local(instant).replace(tzinfo=None), fold=1)) + 1
        while high - low > 1:
            middle = (low + high) // 2
            if self.local(middle).utcoffset() != offset:
                high = middle
            else:
                low = middle
        return self.local(high).replace(tzinfo=None)
