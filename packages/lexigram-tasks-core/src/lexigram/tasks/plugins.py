"""Plugins: one loader for every entry-point group of lexigram-tasks.

Everything pluggable is found the same way, built-ins included: each
distribution declares what it provides in its ``pyproject.toml`` under
``[project.entry-points."<group>"]``, and :class:`PluginGroup` finds it by
name. A name that a distribution of this project provides but that is not
installed gives the pip command; an entry point whose module needs a missing
client library gives the command with the entry point's extra
(``redis = "pkg.mod:Class [redis]"``). See ``docs/development.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, PackageNotFoundError, distribution, entry_points
from typing import Any

from lexigram.tasks.errors import BackendNotFoundError, ConfigurationError
from lexigram.tasks.optional import missing_dependency, pip_install

__all__ = [
    "BACKENDS",
    "CLI_COMMANDS",
    "CONCURRENCY_LIMITERS",
    "CONFIG_SECTIONS",
    "DLQ_STORAGES",
    "GROUPS",
    "RATE_LIMITERS",
    "RESULT_STORES",
    "STATE_STORES",
    "TEMPLATE_STORES",
    "PluginGroup",
]


@dataclass(frozen=True, slots=True)
class PluginGroup:
    """An entry-point group: ``name -> object``, imported when asked for.

    ``provided_by`` maps the names that this project's distributions
    register to the distribution (``"lexigram-tasks-redis"``), so that a
    missing one can be named; it is a hint only, never a place to look.
    """

    group: str
    label: str
    provided_by: Mapping[str, str] = field(default_factory=dict)
    error: type[ConfigurationError] = ConfigurationError

    def entry_points(self) -> dict[str, EntryPoint]:
        """The installed entry points of the group, by name (the first of a name wins)."""
        found: dict[str, EntryPoint] = {}
        for ep in entry_points(group=self.group):
            found.setdefault(ep.name, ep)
        return found

    def names(self) -> list[str]:
        """Every installed name, sorted."""
        return sorted(self.entry_points())

    def load(self, name: str) -> Any:
        """The object registered as ``name``, imported now.

        Raises :attr:`error` (a :class:`~lexigram.tasks.ConfigurationError`)
        for an unknown name, a missing distribution or client library (with
        the pip command), or an entry point that fails to import.
        """
        ep = self.entry_points().get(name)
        if ep is None:
            raise self.error(self.not_found(name, self.names()))
        return self.load_entry_point(ep)

    def load_entry_point(self, ep: EntryPoint) -> Any:
        """Import ``ep``'s target; failures become :attr:`error` with the pip hint if any."""
        what = f"{self.label} {ep.name!r}"
        try:
            return ep.load()
        except ModuleNotFoundError as exc:
            dist = ep.dist.name if ep.dist is not None else self.provided_by.get(ep.name)
            if dist is not None:
                extra = ep.extras[0] if ep.extras else None
                message = missing_dependency(exc, ep.module, dist, extra=extra, feature=what)
                if message is not None:
                    raise self.error(message) from None
            raise self.error(f"{what} ({ep.value}) could not be loaded: {exc}") from exc
        except Exception as exc:
            raise self.error(
                f"{what} ({ep.value}) could not be loaded: {type(exc).__name__}: {exc}"
            ) from exc

    def not_found(self, name: str, registered: list[str]) -> str:
        """Why ``name`` is not there: what is, and which distribution would provide it."""
        dist = self.provided_by.get(name)
        if dist is not None and not _installed(dist):
            return (
                f"{self.label} {name!r} is provided by {dist}, which is not installed: "
                f"{pip_install(dist)}"
            )
        known = ", ".join(repr(n) for n in registered) or "none"
        message = f"unknown {self.label} {name!r}; registered types: {known}"
        if dist is not None:
            message += f". Type {name!r} is provided by {dist}: {pip_install(dist)}"
        return message


def _installed(dist: str) -> bool:
    try:
        distribution(dist)
    except PackageNotFoundError:
        return False
    return True


_CORE = "lexigram-tasks-core"
_REDIS = "lexigram-tasks-redis"
_DLQ = "lexigram-tasks-dlq"
_SCHEDULER = "lexigram-tasks-scheduler"

#: ``tasks.backend(s)[].type``: classes implementing ``TaskQueueProtocol``.
BACKENDS = PluginGroup(
    "lexigram.tasks.backends",
    "backend type",
    {
        "memory": _CORE,
        "redis": _REDIS,
        "rabbitmq": "lexigram-tasks-rabbitmq",
        "postgres": "lexigram-tasks-postgres",
    },
    BackendNotFoundError,
)
#: ``tasks.result_store.type``: classes implementing ``ResultStore``.
RESULT_STORES = PluginGroup(
    "lexigram.tasks.result_stores", "result store type", {"memory": _CORE, "redis": _REDIS}
)
#: ``state_store.type`` of a backend that pairs with one (RabbitMQ): ``JobStateStore`` classes.
STATE_STORES = PluginGroup(
    "lexigram.tasks.state_stores",
    "state store type",
    {"redis": _REDIS, "postgres": "lexigram-tasks-postgres"},
)
#: ``tasks.rate_limiter.type``: classes implementing ``RateLimiter``.
RATE_LIMITERS = PluginGroup(
    "lexigram.tasks.rate_limiters", "rate limiter type", {"local": _CORE, "redis": _REDIS}
)
#: ``tasks.concurrency_limiter.type``: classes implementing ``ConcurrencyLimiter``.
CONCURRENCY_LIMITERS = PluginGroup(
    "lexigram.tasks.concurrency_limiters",
    "concurrency limiter type",
    {"local": _CORE, "redis": _REDIS, "postgres": "lexigram-tasks-postgres"},
)
#: Sections of ``tasks:`` that another distribution reads: ``section(mapping) -> factory``.
CONFIG_SECTIONS = PluginGroup(
    "lexigram.tasks.config", "configuration section", {"dead_letter": _DLQ}
)
#: ``tasks.dead_letter.storage``: classes implementing ``DeadLetterStorage``.
DLQ_STORAGES = PluginGroup(
    "lexigram.tasks.dlq.storages",
    "dead-letter storage",
    {"memory": _DLQ, "redis": _DLQ, "postgres": _DLQ},
)
#: The scheduler's template stores, by name (``--store`` URL schemes map to these).
TEMPLATE_STORES = PluginGroup(
    "lexigram.tasks.scheduler.stores",
    "template store",
    {"memory": _SCHEDULER, "redis": _SCHEDULER, "postgres": _SCHEDULER},
)
#: ``lexigram-tasks <command>``: ``register(subparsers)`` functions.
CLI_COMMANDS = PluginGroup(
    "lexigram.tasks.cli",
    "CLI plugin",
    {"dlq": _DLQ, "postgres": "lexigram-tasks-postgres", "scheduler": _SCHEDULER},
)

#: Every group, for tools and docs.
GROUPS: tuple[PluginGroup, ...] = (
    BACKENDS,
    RESULT_STORES,
    STATE_STORES,
    RATE_LIMITERS,
    CONCURRENCY_LIMITERS,
    CONFIG_SECTIONS,
    DLQ_STORAGES,
    TEMPLATE_STORES,
    CLI_COMMANDS,
)
