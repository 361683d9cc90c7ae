"""Schedule templates: what to enqueue, when, and what to do about missed ticks."""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from lexigram.tasks.job import MAX_PRIORITY, MIN_PRIORITY
from lexigram.tasks.scheduler.cron import CronSchedule, resolve_timezone
from lexigram.tasks.scheduler.errors import InvalidScheduleError

Origin = Literal["code", "runtime"]


class CatchUp(enum.StrEnum):
    """What a template does with ticks missed while no scheduler ran.

    ``SKIP``: missed ticks are dropped; a tick fires only while it is on time
    (within ``misfire_grace`` seconds). ``ONCE``: however many were missed,
    one job runs, for the latest. ``ALL``: every missed tick runs, oldest
    first, but at most ``catch_up_limit`` of them (the latest ones).
    """

    SKIP = "skip"
    ONCE = "once"
    ALL = "all"

    @classmethod
    def parse(cls, value: CatchUp | str) -> CatchUp:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(repr(c.value) for c in cls)
            raise InvalidScheduleError(
                f"catch_up must be one of {choices}, got {value!r}"
            ) from None


@dataclass(frozen=True)
class ScheduleTemplate:
    """One schedule: enqueue task ``task`` with ``args``/``kwargs`` on every ``cron`` tick.

    ``timezone`` is the IANA zone the cron expression is read in; ``backend``
    names one of the provider's backends (default: the task's own route);
    ``jitter`` delays each job by a random 0..jitter seconds (the backend must
    support delays). ``origin`` tells templates defined in code (``@scheduled``)
    from those added at runtime. Invalid values raise :class:`InvalidScheduleError`.
    """

    name: str
    task: str
    cron: str
    timezone: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    backend: str | None = None
    priority: int | None = None
    jitter: float = 0.0
    catch_up: CatchUp = CatchUp.ONCE
    catch_up_limit: int = 10
    misfire_grace: float = 60.0
    description: str | None = None
    origin: Origin = "code"
    schedule: CronSchedule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InvalidScheduleError(f"a schedule needs a non-empty name, got {self.name!r}")
        if not isinstance(self.task, str) or not self.task:
            raise InvalidScheduleError(
                f"schedule {self.name!r} has no handler: give the task (a registered task name)"
            )
        zone = resolve_timezone(self.timezone)
        set_ = object.__setattr__
        set_(self, "timezone", zone.key)
        try:
            set_(self, "schedule", CronSchedule(self.cron, zone, hash_id=self.name))
        except InvalidScheduleError as exc:
            raise InvalidScheduleError(f"schedule {self.name!r}: {exc}") from None
        set_(self, "cron", self.schedule.expression)
        set_(self, "args", tuple(self.args))
        set_(self, "kwargs", dict(self.kwargs))
        set_(self, "catch_up", CatchUp.parse(self.catch_up))
        self._check_json()
        if (
            not isinstance(self.jitter, int | float)
            or not math.isfinite(self.jitter)
            or self.jitter < 0
        ):
            raise InvalidScheduleError(f"schedule {self.name!r}: jitter must be >= 0 seconds")
        if self.priority is not None and not MIN_PRIORITY <= self.priority <= MAX_PRIORITY:
            raise InvalidScheduleError(
                f"schedule {self.name!r}: priority must be between {MIN_PRIORITY} and "
                f"{MAX_PRIORITY}, got {self.priority}"
            )
        if self.catch_up_limit < 1:
            raise InvalidScheduleError(f"schedule {self.name!r}: catch_up_limit must be >= 1")
        if self.misfire_grace < 0:
            raise InvalidScheduleError(f"schedule {self.name!r}: misfire_grace must be >= 0")
        if self.origin not in ("code", "runtime"):
            raise InvalidScheduleError(f"origin must be 'code' or 'runtime', got {self.origin!r}")

    def _check_json(self) -> None:
        for index, value in enumerate(self.args):
            _require_json(value, f"schedule {self.name!r}: positional argument {index}")
        for key, value in self.kwargs.items():
            _require_json(value, f"schedule {self.name!r}: argument {key!r}")

    def next_runs(self, after: float, count: int = 5) -> list[datetime]:
        """The next ``count`` fire times after ``after``, in the template's timezone."""
        return [self.schedule.local(t) for t in self.schedule.next_times(after, count)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document (how stores keep runtime templates)."""
        return {
            "name": self.name,
            "task": self.task,
            "cron": self.cron,
            "timezone": self.timezone,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "backend": self.backend,
            "priority": self.priority,
            "jitter": self.jitter,
            "catch_up": self.catch_up.value,
            "catch_up_limit": self.catch_up_limit,
            "misfire_grace": self.misfire_grace,
            "description": self.description,
            "origin": self.origin,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ScheduleTemplate:
        """Rebuild a template from :meth:`to_dict` output (validated again)."""
        known = {f for f in cls.__dataclass_fields__ if f != "schedule"}
        values = {k: v for k, v in doc.items() if k in known}
        values["args"] = tuple(values.get("args") or ())
        return cls(**values)


def _require_json(value: Any, what: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidScheduleError(
            f"{what} ({type(value).__name__}) is not JSON-serialisable: {exc}"
        ) from None


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    """A template as listed: definition plus its shared state."""

    template: ScheduleTemplate
    paused: bool
    last_fire: datetime | None
    next_run: datetime | None

    @property
    def name(self) -> str:
        return self.template.name

    @property
    def origin(self) -> Origin:
        return self.template.origin


def positional(args: Sequence[Any] | None) -> tuple[Any, ...]:
    """``args`` as a tuple, refusing a lone string (a common slip for ``args=("x",)``)."""
    if args is None:
        return ()
    if isinstance(args, str | bytes):
        raise InvalidScheduleError(f"args must be a list or tuple, got the string {args!r}")
    return tuple(args)
