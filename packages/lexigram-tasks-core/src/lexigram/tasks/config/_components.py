"""Turning a ``type:`` string into the factory that builds it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.registry import TaskBackendRegistry


@dataclass(frozen=True, slots=True)
class ComponentKind:
    """A family of pluggable components other than backends (result stores, dead-letter sinks).

    Types come from the entry-point group ``group`` (third-party packages
    register there) and from ``builtins``: ``type -> ("module:attr", distribution)``.
    """

    label: str
    group: str
    builtins: dict[str, tuple[str, str]]

    def types(self) -> list[str]:
        return sorted({ep.name for ep in entry_points(group=self.group)} | set(self.builtins))

    def resolve(self, type_name: str) -> Callable[..., Any]:
        for ep in entry_points(group=self.group):
            if ep.name == type_name:
                try:
                    loaded: Callable[..., Any] = ep.load()
                except Exception as exc:
                    raise ConfigurationError(
                        f"{self.label} type {type_name!r} ({ep.value}) could not be loaded: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                return loaded
        builtin = self.builtins.get(type_name)
        if builtin is None:
            known = ", ".join(repr(t) for t in self.types()) or "none"
            raise ConfigurationError(
                f"unknown {self.label} type {type_name!r}; known types: {known} "
                f"(packages add types through the {self.group!r} entry-point group)"
            )
        target, dist = builtin
        module_name, _, attr = target.partition(":")
        try:
            module = import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                raise ConfigurationError(
                    f"{self.label} type {type_name!r} is provided by {dist}, which is not "
                    f"installed: pip install {dist}"
                ) from None
            raise
        factory: Callable[..., Any] = getattr(module, attr)
        return factory


RESULT_STORES = ComponentKind(
    "result store",
    "lexigram.tasks.result_stores",
    {
        "memory": ("lexigram.tasks.results:MemoryResultStore", "lexigram-tasks-core"),
        "redis": ("lexigram.tasks.redis:CacheBackendResultStore", "lexigram-tasks-redis"),
    },
)

DEAD_LETTER_DIST = "lexigram-tasks-dlq"


def dead_letter_factory(options: dict[str, Any]) -> Callable[..., Any]:
    """``DeadLetterQueue.from_config`` bound to the ``tasks.dead_letter`` mapping.

    The section belongs to lexigram-tasks-dlq (``storage:`` plus the storage's
    keywords); its storage is built once here so that a wrong key fails at
    load time, and again for each provider.
    """
    try:
        from lexigram.tasks.dlq import DeadLetterQueue  # type: ignore[attr-defined,unused-ignore]
    except ImportError as exc:
        if exc.name is not None and "lexigram.tasks.dlq".startswith(exc.name):
            raise ConfigurationError(
                f"the dead letter queue is provided by {DEAD_LETTER_DIST}, which is not "
                f"installed: pip install {DEAD_LETTER_DIST}"
            ) from None
        raise
    from_config: Callable[..., Any] = DeadLetterQueue.from_config
    from_config(options)
    return functools.partial(from_config, options)


def resolve_backend(registry: TaskBackendRegistry, type_name: str) -> Callable[..., Any]:
    """The backend factory for ``type_name``, imported now so its signature can be checked."""
    return registry.resolve(type_name)
