"""WorkerSettings: how a worker pool runs, declared once.

``TaskProvider`` and ``WorkerPool`` take it (or its fields as keywords), the
configuration file's ``tasks.worker`` section is validated against it, and
``lexigram-tasks worker`` derives one flag per field from it.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, ClassVar, Literal, TypedDict

from annotated_types import Ge, Gt

from lexigram.tasks.keywords import with_keywords


def _setting(default: float | str, help: str, *flags: str) -> Any:
    """A field with its CLI help and flags (default flag: ``--field-name``)."""
    return field(default=default, metadata={"help": help, "flags": flags})


def processes_value(value: Any) -> Any:
    """``"auto"`` as the CPU count (the ``processes`` setting); other values unchanged."""
    return (os.cpu_count() or 1) if value == "auto" else value


class _AutoProcesses:
    """Annotation of ``processes``: the configuration file's ``auto`` is read as the CPU count."""

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema  # imported only when a file is validated

        return core_schema.no_info_before_validator_function(processes_value, handler(source))


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings:
    """How each worker pool runs; every field is also a ``TaskProvider``/``WorkerPool``
    keyword, a ``tasks.worker`` key in the configuration file and a
    ``lexigram-tasks worker`` flag.

    ``WorkerSettings(worker_count=4)`` validates its values (``ValueError`` for
    one out of range, ``TypeError`` for one of the wrong type).
    """

    # Read by pydantic when the configuration file is validated: unknown keys are errors.
    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    worker_count: Annotated[int, Ge(1)] = _setting(
        1, "jobs run at once by each backend's pool", "-c", "--concurrency"
    )
    poll_interval: Annotated[float, Gt(0)] = _setting(0.5, "longest wait for a job in one fetch")
    default_timeout: Annotated[float, Gt(0)] = _setting(
        300.0, "per-task timeout when the task sets none"
    )
    shutdown_timeout: Annotated[float, Ge(0)] = _setting(30.0, "graceful-shutdown window")
    lease_seconds: Annotated[float, Gt(0)] = _setting(
        30.0, "how long a fetched job is reserved; renewed every third of it while it runs"
    )
    blocked_loop_warning: Annotated[float, Ge(0)] = _setting(
        1.0, "warn when the event loop has not turned for this long (0 turns it off)"
    )
    lost_lease_retries: Annotated[int, Ge(0)] = _setting(
        2, "runs a job may lose with its worker before it is dead-lettered as LeaseExpired"
    )
    unknown_task_grace: Annotated[float, Ge(0)] = _setting(
        300.0, "how long a job for a task no worker has is handed back before it is dead-lettered"
    )
    progress_interval: Annotated[float, Gt(0)] = _setting(
        0.5, "shortest time between two progress writes of one job (reports in between are merged)"
    )
    registry_interval: Annotated[float, Gt(0)] = _setting(
        5.0, "how often a worker refreshes its entry in the live-worker list (it expires after 3x)"
    )
    processes: Annotated[int, Ge(1), _AutoProcesses()] = _setting(
        1, "worker processes the worker command starts and supervises ('auto': one per CPU)"
    )
    default_executor: Literal["thread", "process"] = _setting(
        "thread", "where plain def tasks that name no executor run: thread or process"
    )
    process_pool_size: Annotated[int, Ge(0)] = _setting(
        0, "child processes of each pool's process executor (0: worker_count, at most one per CPU)"
    )
    max_jobs_per_child: Annotated[int, Ge(0)] = _setting(
        0, "jobs a process-executor child runs before it is replaced (0: no limit)"
    )
    max_memory_per_child: Annotated[int, Ge(0)] = _setting(
        0, "resident memory in MB after which a process-executor child is replaced (0: no limit)"
    )

    def __post_init__(self) -> None:
        for name, (kind, bounds) in _CHECKS.items():
            _check(name, getattr(self, name), kind, bounds)
        for name, choices in _CHOICES.items():
            _check_choice(name, getattr(self, name), choices)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def merged(
        cls, settings: WorkerSettings | None, changes: Mapping[str, Any], owner: str
    ) -> WorkerSettings:
        """``settings`` (default: the defaults) with ``changes`` applied.

        ``owner`` names the caller in the ``TypeError`` for an unknown keyword,
        as Python itself would.
        """
        return with_keywords(settings or cls(), changes, owner, "worker settings")


class WorkerSettingsKeywords(TypedDict, total=False):
    """The :class:`WorkerSettings` fields as keywords of ``TaskProvider`` and
    ``WorkerPool``, so type checkers and editors know them (a test keeps the
    two in step)."""

    worker_count: int
    poll_interval: float
    default_timeout: float
    shutdown_timeout: float
    lease_seconds: float
    blocked_loop_warning: float
    lost_lease_retries: int
    unknown_task_grace: float
    progress_interval: float
    registry_interval: float
    processes: int
    default_executor: Literal["thread", "process"]
    process_pool_size: int
    max_jobs_per_child: int
    max_memory_per_child: int


class SettingsView:
    """Each :class:`WorkerSettings` field readable as an attribute of its holder:
    ``pool.worker_count`` is ``pool.settings.worker_count``."""

    settings: WorkerSettings

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails; hot paths read ``self.settings.x``.
        if name in _NAMES:
            return getattr(self.settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


class SettingsAttributes(SettingsView):
    """:class:`SettingsView`, and assigning a field (``provider.worker_count = 8``)
    replaces ``settings`` with a validated copy."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _NAMES:
            value = dataclasses.replace(self.settings, **{name: value})
            name = "settings"
        object.__setattr__(self, name, value)


_NAMES = frozenset(WorkerSettings.names())
_HINTS = typing.get_type_hints(WorkerSettings, include_extras=True)
#: Field name -> (int or float, its Ge/Gt bounds), from the annotations above.
#: Field name -> its allowed values, for the ``Literal`` fields (strings).
_CHOICES: dict[str, tuple[str, ...]] = {
    name: typing.get_args(_HINTS[name])
    for name in WorkerSettings.names()
    if typing.get_origin(_HINTS[name]) is Literal
}
_CHECKS: dict[str, tuple[type, tuple[Any, ...]]] = {
    name: (
        typing.get_args(_HINTS[name])[0],
        tuple(b for b in typing.get_args(_HINTS[name])[1:] if isinstance(b, Ge | Gt)),
    )
    for name in WorkerSettings.names()
    if name not in _CHOICES
}


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check(name: str, value: Any, kind: type, bounds: tuple[Any, ...]) -> None:
    wanted = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, wanted):
        what = "an integer" if kind is int else "a number"
        raise TypeError(f"{name} must be {what}, got {value!r}")
    for bound in bounds:
        limit: Any = bound.ge if isinstance(bound, Ge) else bound.gt
        if isinstance(bound, Ge) and not value >= limit:
            raise ValueError(f"{name} must be >= {limit}, got {value!r}")
        if isinstance(bound, Gt) and not value > limit:
            raise ValueError(f"{name} must be > {limit}, got {value!r}")


def setting_flags(name: str) -> tuple[str, ...]:
    """The ``lexigram-tasks worker`` flags of a field (``--field-name`` unless declared)."""
    declared: tuple[str, ...] = WorkerSettings.__dataclass_fields__[name].metadata["flags"]
    return declared or ("--" + name.replace("_", "-"),)


def setting_help(name: str) -> str:
    """The one-line meaning of a field, as declared."""
    text: str = WorkerSettings.__dataclass_fields__[name].metadata["help"]
    return text


def setting_kind(name: str) -> type:
    """``int``, ``float`` or ``str`` (one of :func:`setting_choices`): the type of a field."""
    return str if name in _CHOICES else _CHECKS[name][0]


def setting_choices(name: str) -> tuple[str, ...]:
    """The values a ``str`` field allows (empty for a number)."""
    return _CHOICES.get(name, ())


def parse_setting(name: str, text: str) -> int | float | str:
    """``text`` as the value of field ``name``, checked as :class:`WorkerSettings` checks it.

    Raises ``ValueError`` naming the problem.
    """
    if name in _CHOICES:
        _check_choice(name, text, _CHOICES[name])
        return text
    kind = setting_kind(name)
    try:
        value = int(text) if kind is int else float(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{name} must be {what}, got {text!r}") from None
    _check(name, value, kind, _CHECKS[name][1])
    return value
