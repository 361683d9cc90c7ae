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
(the built-ins are entry points of this distribution too), so a third-party
package adds one by being installed. Core's configuration reaches this module
through the ``dead_letter`` entry point of the ``lexigram.tasks.config`` group.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from lexigram.tasks.config import ConfigKeyError
from lexigram.tasks.dlq.storage import DeadLetterStorage
from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.optional import import_optional
from lexigram.tasks.plugins import DLQ_STORAGES

if TYPE_CHECKING:
    from lexigram.tasks.dlq.queue import DeadLetterQueue

ENTRY_POINT_GROUP = DLQ_STORAGES.group
FEEDER_KEY = "rabbitmq"
SECTION_KEY = "tasks.dead_letter"


def storage_types() -> list[str]:
    """Every storage type a config may name."""
    return DLQ_STORAGES.names()


def config_section(options: Mapping[str, Any]) -> Callable[..., DeadLetterQueue]:
    """The ``dead_letter`` section of core's configuration (entry point
    ``lexigram.tasks.config: dead_letter``): checks ``options`` now by building
    the queue once, and returns ``DeadLetterQueue.from_config`` bound to them,
    called again for each provider (with ``tracer_provider=`` if it has one)."""
    from lexigram.tasks.dlq.queue import DeadLetterQueue

    DeadLetterQueue.from_config(options)
    return functools.partial(DeadLetterQueue.from_config, options)


def dead_letter_queue_from_config(
    cls: type[DeadLetterQueue],
    options: Mapping[str, Any],
    *,
    key: str = SECTION_KEY,
    **kwargs: Any,
) -> DeadLetterQueue:
    """The queue (and its RabbitMQ feeder, if configured) a ``dead_letter`` mapping describes."""
    if not isinstance(options, Mapping):
        raise ConfigKeyError(key, (), f"must be a mapping, got {type(options).__name__}")
    storage_options = {k: v for k, v in options.items() if k != FEEDER_KEY}
    dlq = cls(storage_from_config(storage_options, key=key), **kwargs)
    feed = options.get(FEEDER_KEY)
    if feed is not None:
        dlq.feeders.append(_feeder(dlq, feed, key))
    return dlq


def _feeder(dlq: DeadLetterQueue, options: Any, key: str) -> Any:
    if not isinstance(options, Mapping):
        raise ConfigKeyError(key, (FEEDER_KEY,), f"must be a mapping, got {type(options).__name__}")
    try:
        module = import_optional(
            "lexigram.tasks.dlq.rabbitmq",
            "lexigram-tasks-dlq",
            extra="rabbitmq",
            feature="the RabbitMQ feeder",
        )
    except ImportError as exc:
        raise ConfigKeyError(key, (FEEDER_KEY,), str(exc)) from exc
    feeder_class = module.RabbitMQDeadLetterFeeder
    kwargs = dict(options)
    if isinstance(kwargs.get("queue_names"), str):
        kwargs["queue_names"] = [kwargs["queue_names"]]
    if "amqp_url" not in kwargs:
        raise ConfigKeyError(key, (FEEDER_KEY, "amqp_url"), "required key is missing")
    _check_keywords(feeder_class, kwargs, key, (FEEDER_KEY,), skip={"dlq"})
    return feeder_class(dlq, **kwargs)


def storage_from_config(options: Mapping[str, Any], *, key: str = SECTION_KEY) -> DeadLetterStorage:
    """Build the storage a ``dead_letter`` mapping describes.

    Raises :class:`~lexigram.tasks.ConfigurationError` (a
    :class:`~lexigram.tasks.config.ConfigKeyError` naming the key) for an
    unknown type or a keyword the storage does not take.
    """
    if not isinstance(options, Mapping):
        raise ConfigKeyError(key, (), f"must be a mapping, got {type(options).__name__}")
    kwargs = dict(options)
    kind = kwargs.pop("storage", "memory")
    if not isinstance(kind, str):
        raise ConfigKeyError(key, ("storage",), f"must be a string, got {kind!r}")
    try:
        factory: Callable[..., DeadLetterStorage] = DLQ_STORAGES.load(kind)
    except ConfigurationError as exc:
        raise ConfigKeyError(key, ("storage",), str(exc)) from exc
    _check_keywords(
        factory, kwargs, key, (), prefix=f"storage {kind!r}: ", also=("storage", FEEDER_KEY)
    )
    storage: DeadLetterStorage = factory(**kwargs)
    return storage


def _check_keywords(
    factory: Callable[..., Any],
    kwargs: Mapping[str, Any],
    section: str,
    key: tuple[str, ...],
    *,
    prefix: str = "",
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
        raise ConfigKeyError(
            section,
            key,
            f"{prefix}unknown key(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join([*also, *sorted(accepted)])}",
        )
