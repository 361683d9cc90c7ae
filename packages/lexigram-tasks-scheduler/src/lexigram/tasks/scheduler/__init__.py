"""Cron scheduling for lexigram-tasks.

``@scheduled(cron=...)`` defines a template in code; ``TaskScheduler(provider)``
registers those functions as tasks and enqueues one ordinary job per tick,
so scheduling works on every backend. Templates can also be added, paused,
resumed and removed at runtime; with a Redis or PostgreSQL template store,
several scheduler processes fire each tick exactly once between them.
See ``docs/scheduling.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lexigram.tasks.scheduler._version import __version__
from lexigram.tasks.scheduler.cron import CronSchedule
from lexigram.tasks.scheduler.errors import (
    InvalidScheduleError,
    ReadOnlyTemplateError,
    TemplateExistsError,
    TemplateNotFoundError,
)
from lexigram.tasks.scheduler.registry import (
    CodeTemplate,
    ScheduleRegistry,
    default_registry,
    scheduled,
)
from lexigram.tasks.scheduler.scheduler import (
    HEADER_FIRE_TIME,
    HEADER_TEMPLATE,
    FiredTick,
    TaskScheduler,
    default_store,
)
from lexigram.tasks.scheduler.store import (
    MemoryTemplateStore,
    StoreSnapshot,
    TemplateState,
    TemplateStore,
)
from lexigram.tasks.scheduler.template import (
    CatchUp,
    ScheduleOptions,
    ScheduleTemplate,
    TemplateInfo,
)

if TYPE_CHECKING:
    from lexigram.tasks.scheduler.postgres_store import PostgresTemplateStore
    from lexigram.tasks.scheduler.redis_store import RedisTemplateStore

# The Redis and PostgreSQL stores import their client only when used.
_LAZY = {
    "RedisTemplateStore": "lexigram.tasks.scheduler.redis_store",
    "PostgresTemplateStore": "lexigram.tasks.scheduler.postgres_store",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lexigram.tasks.scheduler' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "HEADER_FIRE_TIME",
    "HEADER_TEMPLATE",
    "CatchUp",
    "CodeTemplate",
    "CronSchedule",
    "FiredTick",
    "InvalidScheduleError",
    "MemoryTemplateStore",
    "PostgresTemplateStore",
    "ReadOnlyTemplateError",
    "RedisTemplateStore",
    "ScheduleRegistry",
    "ScheduleOptions",
    "ScheduleTemplate",
    "StoreSnapshot",
    "TaskScheduler",
    "TemplateExistsError",
    "TemplateInfo",
    "TemplateNotFoundError",
    "TemplateState",
    "TemplateStore",
    "__version__",
    "default_registry",
    "default_store",
    "scheduled",
]
