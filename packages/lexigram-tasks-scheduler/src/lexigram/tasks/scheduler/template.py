"""Schedule templates: what to enqueue, when, and what to do about missed ticks."""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Literal

from lexigram.tasks.job import MAX_PRIORITY, MIN_PRIORITY
from lexigram.tasks.keywords import with_keywords
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


def _option(default: Any, help: str) -> Any:
    """An option with its ``schedule add`` help (flag ``--option-name``)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class ScheduleOptions:
    """How a schedule enqueues and catches up: declared once for ``@scheduled``,
    :meth:`TaskScheduler.add <lexigram.tasks.scheduler.TaskScheduler.add>` and
    ``lexigram-tasks schedule add`` (a flag per field), which take an instance
    (``options=``) and/or its fields as keywords.

    ``timezone`` is the IANA zone the cron expression is read in (a
    ``tzinfo`` is turned into its key); ``backend``
    names one of the provider's backends (default: the task's own route);
    ``jitter`` delays each job by a random 0..jitter seconds (the backend must
    support delays); ``catch_up`` says what happens to ticks missed while no
    scheduler ran (see :class:`CatchUp`). Values are checked when a template
    is built from them.
    """

    timezone: str = _option("UTC", "IANA timezone the cron expression is read in")
    args: tuple[Any, ...] = _option((), "the job's positional arguments (JSON list)")
    kwargs: Mapping[str, Any] = field(
        default_factory=dict, metadata={"help": "the job's keyword arguments (JSON object)"}
    )
    backend: str | None = _option(None, "provider backend to send the jobs to")
    priority: int | None = _option(None, "job priority 0-9")
    jitter: float = _option(0.0, "delay each job by a random 0..SECONDS")
    catch_up: CatchUp = field(
        default=CatchUp.ONCE,
        metadata={"help": "after downtime: skip missed ticks, run once, or run all"},
    )
    catch_up_limit: int = _option(10, "with catch_up all: at most this many missed ticks")
    misfire_grace: float = _option(60.0, "with catch_up skip: how late a tick may still fire")
    description: str | None = _option(None, "free text shown in listings")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in fields(ScheduleOptions))

    @classmethod
    def merged(
        cls, options: ScheduleOptions | None, keywords: Mapping[str, Any], owner: str
    ) -> ScheduleOptions:
        """``options`` (default: the defaults) with ``keywords`` applied.

        ``owner`` names the caller in the ``TypeError`` for an unknown keyword;
        a lone string as ``args`` raises :class:`InvalidScheduleError`.
        """
        given = dict(keywords)
        if "args" in given:
            given["args"] = positional(given["args"])
        if given.get("kwargs") is None:
            given.pop("kwargs", None)
        return with_keywords(options or ScheduleOptions(), given, owner, "schedule options")

    def values(self) -> dict[str, Any]:
        """The options by name (shallow)."""
        return {name: getattr(self, name) for name in ScheduleOptions.names()}


@dataclass(frozen=True)
class ScheduleTemplate(ScheduleOptions):
    """One schedule: enqueue task ``task`` with ``args``/``kwargs`` on every ``cron`` tick,
    as its :class:`ScheduleOptions` say.

    ``origin`` tells templates defined in code (``@scheduled``) from those
    added at runtime. Invalid values raise :class:`InvalidScheduleError`.
    """

    name: str
    task: str
    cron: str
    origin: Origin = "code"
    schedule: CronSchedule = field(init=False, repr=False, compare=False)

    @classmethod
    def build(
        cls, name: str, task: str, cron: str, options: ScheduleOptions, origin: Origin
    ) -> ScheduleTemplate:
        """The template of ``task`` on ``cron`` with these options."""
        return cls(name=name, task=task, cron=cron, origin=origin, **options.values())

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
        doc = {"name": self.name, "task": self.task, "cron": self.cron, **self.values()}
        doc.update(args=list(self.args), kwargs=dict(self.kwargs), catch_up=self.catch_up.value)
        doc["origin"] = self.origin
        return doc

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
