"""FailureFilter: which records list, count, replay and purge act on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeAlias

from lexigram.tasks.dlq.record import FailureRecord

#: A point in time: Unix epoch seconds or a datetime (naive means UTC).
Moment: TypeAlias = float | int | datetime


def to_epoch(moment: Moment | None) -> float | None:
    """``moment`` as Unix epoch seconds."""
    if moment is None:
        return None
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    return float(moment)


@dataclass(frozen=True, slots=True)
class FailureFilter:
    """Records matching every given field; ``None`` matches anything.

    The time range is ``since <= failed_at < until`` (epoch seconds).
    """

    task: str | None = None
    queue: str | None = None
    error_type: str | None = None
    since: float | None = None
    until: float | None = None

    @classmethod
    def of(
        cls,
        *,
        task: str | None = None,
        queue: str | None = None,
        error_type: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
    ) -> FailureFilter:
        """Build a filter, accepting datetimes for the time range."""
        return cls(task, queue, error_type, to_epoch(since), to_epoch(until))

    @property
    def is_empty(self) -> bool:
        """True when the filter matches every record."""
        return self == FailureFilter()

    def matches(self, record: FailureRecord) -> bool:
        if self.task is not None and record.task != self.task:
            return False
        if self.queue is not None and record.queue != self.queue:
            return False
        if self.error_type is not None and record.error_type != self.error_type:
            return False
        if self.since is not None and record.failed_at < self.since:
            return False
        return self.until is None or record.failed_at < self.until

    def bounded(self, until: float) -> FailureFilter:
        """The same filter, with ``until`` no later than the given time."""
        end = until if self.until is None else min(self.until, until)
        return FailureFilter(self.task, self.queue, self.error_type, self.since, end)

    def describe(self) -> str:
        """A short human description, e.g. ``task=x error_type=ValueError``."""
        parts = [
            f"{name}={value}"
            for name, value in (
                ("task", self.task),
                ("queue", self.queue),
                ("error_type", self.error_type),
                ("since", _iso(self.since)),
                ("until", _iso(self.until)),
            )
            if value is not None
        ]
        return " ".join(parts) or "all records"


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
