"""The ``tasks.dead_letter`` configuration section.

```yaml
tasks:
  dead_letter:
    storage: redis            # memory (default) | redis | postgres | an entry point
    redis_url: "${REDIS_URL}" # the other keys are the storage class's keyword arguments
    rabbitmq:                 # optional: feed RabbitMQ's dead-letter queues into it
      amqp_url: "${AMQP_URL}"
      queue_names: [default]
```

Storage types come from the entry-point group ``lexigram.tasks.dlq.storages``
as well as the built-ins, so a third-party package adds one by being installed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from lexigram.tasks.dlq.storage import DeadLetterStorage
from lexigram.tasks.errors import ConfigurationError

if TYPE_CHECKING:
    from lexigram.tasks.dlq.queue import DeadLetterQueue

ENTRY_POINT_GROUP = "lexigram.tasks.dlq.storages"
FEEDER_KEY = "rabbitmq"

#: Built-in storage types: type -> (import target, extra that brings its client).
BUILTIN_STORAGES: dict[str, tuple[str, str | None]] = {
    "memory": ("lexigram.tasks.dlq.storage:MemoryDeadLetterStorage", None),
    "redis": ("lexigram.tasks.dlq.redis:RedisDeadLetterStorage", "redis"),
    "postgres": ("lexigram.tasks.dlq.postgres:PostgresDeadLetterStorage", "postgres"),
}


def storage_types() -> list[str]:
    """Every storage type a config may name."""
    return sorted(set(BUILTIN_STORAGES) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def dead_letter_queue_from_config(
    cls: type[DeadLetterQueue],
    options: Mapping[str, Any],
    *,
    key: str = "tasks.dead_letter",
    **kwargs: Any,
) -> DeadLetterQueue:
    """The queue (and its RabbitMQ feeder, if configured) a ``dead_letter`` mapping describes."""
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"{key} must be a mapping, got {type(options).__name__}")
    storage_options = {k: v for k, v in options.items() if k != FEEDER_KEY}
    dlq = cls(storage_from_config(storage_options, key=key), **kwargs)
    feed = options.get(FEEDER_KEY)
    if feed is not None:
        dlq.feeders.append(_feeder(dlq, feed, f"{key}.{FEEDER_KEY}"))
    return dlq


def _feeder(dlq: DeadLetterQueue, options: Any, key: str) -> Any:
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"{key} must be a mapping, got {type(options).__name__}")
    try:
        from lexigram.tasks.dlq.rabbitmq import RabbitMQDeadLetterFeeder
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"{key} needs the {exc.name!r} package, which is not installed: "
            'pip install "lexigram-tasks-dlq[rabbitmq]"'
        ) from exc
    kwargs = dict(options)
    if isinstance(kwargs.get("queue_names"), str):
        kwargs["queue_names"] = [kwargs["queue_names"]]
    if "amqp_url" not in kwargs:
        raise ConfigurationError(f"{key}.amqp_url is required")
    _check_keywords(RabbitMQDeadLetterFeeder, kwargs, key, skip={"dlq"})
    return RabbitMQDeadLetterFeeder(dlq, **kwargs)


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
    _check_keywords(factory, kwargs, f"{key} (storage {kind!r})", also=("storage", FEEDER_KEY))
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


def _check_keywords(
    factory: Callable[..., Any],
    kwargs: Mapping[str, Any],
    where: str,
    *,
    skip: frozenset[str] | set[str] = frozenset(),
    also: tuple[str, ...] = (),
) -> None:
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
        and name not in skip
    }
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join([*also, *sorted(accepted)])}"
        )
