"""FailureFilter: which records list, count, replay and purge act on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, TypeAlias

from lexigram.tasks.dlq.record import FailureRecord
from lexigram.tasks.keywords import with_keywords

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


def _criterion(help: str) -> Any:
    """A filter field with its ``dlq`` command-line help (flag ``--field-name``)."""
    return field(default=None, metadata={"help": help})


@dataclass(frozen=True, slots=True)
class FailureFilter:
    """Records matching every given field; ``None`` matches anything.

    The one declaration of the DLQ's filters: ``DeadLetterQueue.list``,
    ``count``, ``replay_many`` and ``purge`` take one (``where=``) or its
    fields as keywords, and ``lexigram-tasks dlq`` has a flag per field.
    The time range is ``since <= failed_at < until`` (epoch seconds).
    """

    task: str | None = _criterion("task name")
    queue: str | None = _criterion("queue name")
    error_type: str | None = _criterion("exception class name, e.g. ValueError")
    since: float | None = _criterion("failed at or after")
    until: float | None = _criterion("failed before")

    @classmethod
    def of(cls, **criteria: str | Moment | None) -> FailureFilter:
        """Build a filter from keywords, accepting datetimes for the time range."""
        return cls.merged(None, criteria, "FailureFilter.of")

    @classmethod
    def merged(
        cls, where: FailureFilter | None, criteria: Mapping[str, Any], owner: str
    ) -> FailureFilter:
        """``where`` (default: match all) with the keyword ``criteria`` applied.

        ``owner`` names the caller in the ``TypeError`` for an unknown keyword.
        """
        given: dict[str, Any] = {k: to_epoch(v) if k in _TIMES else v for k, v in criteria.items()}
        return with_keywords(where or cls(), given, owner, "filters")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The filter fields, in declaration order."""
        return tuple(f.name for f in fields(cls))

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
        return replace(self, until=until if self.until is None else min(self.until, until))

    def describe(self) -> str:
        """A short human description, e.g. ``task=x error_type=ValueError``."""
        parts = [
            f"{name}={_iso(value) if name in _TIMES else value}"
            for name in self.names()
            if (value := getattr(self, name)) is not None
        ]
        return " ".join(parts) or "all records"


#: The fields holding a point in time (epoch seconds).
_TIMES = frozenset({"since", "until"})


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
