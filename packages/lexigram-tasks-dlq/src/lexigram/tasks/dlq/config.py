"""The ``tasks.dead_letter`` configuration section.

```yaml
tasks:
  dead_letter:
    storage: redis            # memory (default) | redis | postgres | an entry point
    redis_url: "${REDIS_URL}" # the other keys are the storage class's keyword arguments
```

Storage types come from the entry-point group ``lexigram.tasks.dlq.storages``
as well as the built-ins, so a third-party package adds one by being installed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from lexigram.tasks.dlq.storage import DeadLetterStorage
from lexigram.tasks.errors import ConfigurationError

ENTRY_POINT_GROUP = "lexigram.tasks.dlq.storages"

#: Built-in storage types: type -> (import target, extra that brings its client).
BUILTIN_STORAGES: dict[str, tuple[str, str | None]] = {
    "memory": ("lexigram.tasks.dlq.storage:MemoryDeadLetterStorage", None),
    "redis": ("lexigram.tasks.dlq.redis:RedisDeadLetterStorage", "redis"),
    "postgres": ("lexigram.tasks.dlq.postgres:PostgresDeadLetterStorage", "postgres"),
}


def storage_types() -> list[str]:
    """Every storage type a config may name."""
    return sorted(set(BUILTIN_STORAGES) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def storage_from_config(
    options: Mapping[str, Any], *, key: str = "tasks.dead_letter"
) -> DeadLetterStorage:
    """Build the storage a ``dead_letter`` mapping describes.

    Raises :class:`~lexigram.tasks.ConfigurationError` naming the key for an
    unknown type or a keyword the storage does not take.
    """
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"{key} must be a mapping, got {type(options).__name__}")
    kwargs = dict(options)
    kind = kwargs.pop("storage", "memory")
    if not isinstance(kind, str):
        raise ConfigurationError(f"{key}.storage must be a string, got {kind!r}")
    factory = _factory(kind, key)
    _check_keywords(factory, kwargs, f"{key} (storage {kind!r})")
    storage: DeadLetterStorage = factory(**kwargs)
    return storage


def _factory(kind: str, key: str) -> Callable[..., DeadLetterStorage]:
    target: str | None = None
    extra: str | None = None
    if kind in BUILTIN_STORAGES:
        target, extra = BUILTIN_STORAGES[kind]
    else:
        for ep in entry_points(group=ENTRY_POINT_GROUP, name=kind):
            target = ep.value
    if target is None:
        known = ", ".join(repr(t) for t in storage_types())
        raise ConfigurationError(
            f"{key}.storage: unknown dead-letter storage {kind!r}; known storages: {known}"
        )
    module_name, _, attr = target.partition(":")
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as exc:
        hint = f': pip install "lexigram-tasks-dlq[{extra}]"' if extra else ""
        raise ConfigurationError(
            f"{key}.storage {kind!r} needs the {exc.name!r} package, which is not installed{hint}"
        ) from exc
    factory: Callable[..., DeadLetterStorage] = getattr(module, attr)
    return factory


def _check_keywords(factory: Callable[..., Any], kwargs: Mapping[str, Any], where: str) -> None:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = {
        name
        for name, p in parameters.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"accepted: storage, {', '.join(sorted(accepted)) or '(none)'}"
        )
