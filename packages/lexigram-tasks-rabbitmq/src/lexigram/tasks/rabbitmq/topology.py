"""Names and arguments of the broker objects a queue uses.

For a queue ``Q``:

- ``Q``: the work queue (durable; classic with ``x-max-priority``, or quorum),
  dead-lettering into ``Q.dlx``;
- ``Q.dlx`` (fanout exchange) and ``Q.dlq`` (queue): the dead letters;
- ``Q.delay.0`` ... ``Q.delay.31``: the delay ladder, declared on first use.

The delay ladder needs no broker plugin. Level ``L`` is a topic exchange and
a queue whose messages all live exactly ``2**L`` ms (``x-message-ttl``), so
they expire in order. A delay of ``d`` ms (made odd, so bit 0 is set) is
written in binary into the routing key, one word per level. Each level's
exchange sends the message into its queue when the level's bit is 1, else
straight to the next level down; each queue dead-letters to the next level
down, keeping the routing key, and level 0 dead-letters to the destination.
A delayed message therefore waits the sum of the TTLs of its set bits:
exactly ``d`` ms plus a little broker time, never less.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange

from lexigram.tasks.errors import ConfigurationError

QueueType = Literal["classic", "quorum"]

#: Levels of the delay ladder: level L holds messages for 2**L ms, so the
#: longest single trip is 2**32 - 1 ms (about 49.7 days); longer delays make
#: more trips (see ``RabbitMQTaskQueue``).
LADDER_LEVELS = 32
MAX_LADDER_DELAY_MS = (1 << LADDER_LEVELS) - 1


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a message goes when it is ready: an exchange and a routing key."""

    exchange: str
    routing_key: str

    @property
    def ladder_prefix(self) -> str:
        """Name prefix of the delay ladder that ends at this destination."""
        if self.exchange:
            return f"{self.exchange}.{self.routing_key}.delay"
        return f"{self.routing_key}.delay"


def dead_letter_exchange(queue: str) -> str:
    return f"{queue}.dlx"


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dlq"


def ladder_name(prefix: str, level: int) -> str:
    """Name of level ``level``'s exchange and queue (they share it)."""
    return f"{prefix}.{level}"


def ladder_delay_ms(seconds: float) -> int:
    """The delay the ladder applies for ``seconds``: rounded up to whole ms, made odd, capped."""
    ms = math.ceil(seconds * 1000)
    return min(max(ms, 1) | 1, MAX_LADDER_DELAY_MS)


def ladder_top_level(delay_ms: int) -> int:
    """The highest level a delay of ``delay_ms`` passes through (its entry exchange)."""
    return delay_ms.bit_length() - 1


def ladder_routing_key(delay_ms: int) -> str:
    """The delay in binary, one word per level, highest level first."""
    return ".".join("1" if delay_ms >> level & 1 else "0" for level in _levels_high_to_low())


def ladder_binding_key(level: int, bit: str) -> str:
    """Topic pattern matching routing keys whose ``level`` bit is ``bit``."""
    return ".".join(["*"] * (LADDER_LEVELS - 1 - level) + [bit, "#"])


def _levels_high_to_low() -> range:
    return range(LADDER_LEVELS - 1, -1, -1)


def work_queue_arguments(
    queue_type: QueueType,
    *,
    queue: str,
    max_priority: int,
    message_ttl: float | None,
    delivery_limit: int | None,
    extra: dict[str, Any],
    quorum_replicas: int | None = None,
) -> dict[str, Any]:
    """``x-`` arguments of the work queue."""
    args = _kind(queue_type, quorum_replicas)
    args["x-dead-letter-exchange"] = dead_letter_exchange(queue)
    if queue_type == "classic" and max_priority > 0:
        args["x-max-priority"] = max_priority
    if queue_type == "quorum":
        args.update(_quorum_safe_dead_lettering())
        if delivery_limit is not None:
            args["x-delivery-limit"] = delivery_limit
    if message_ttl is not None:
        args["x-message-ttl"] = round(message_ttl * 1000)
    args.update(extra)
    return args


def dead_letter_queue_arguments(
    queue_type: QueueType, quorum_replicas: int | None = None
) -> dict[str, Any]:
    return _kind(queue_type, quorum_replicas)


def ladder_queue_arguments(
    queue_type: QueueType,
    *,
    prefix: str,
    level: int,
    destination: Destination,
    quorum_replicas: int | None = None,
) -> dict[str, Any]:
    """Level ``level`` holds messages ``2**level`` ms, then passes them one level down."""
    args = _kind(queue_type, quorum_replicas)
    args["x-message-ttl"] = 1 << level
    if level == 0:
        args["x-dead-letter-exchange"] = destination.exchange
        args["x-dead-letter-routing-key"] = destination.routing_key
    else:
        # No x-dead-letter-routing-key: the message keeps its binary routing key.
        args["x-dead-letter-exchange"] = ladder_name(prefix, level - 1)
    if queue_type == "quorum":
        args.update(_quorum_safe_dead_lettering())
    return args


def _kind(queue_type: QueueType, quorum_replicas: int | None = None) -> dict[str, Any]:
    # The classic storage version is left to the broker (v1 before 3.13, v2 after):
    # on 3.10, v2 confirms publishes faster but hands jobs to workers later (figures
    # in docs/backends/rabbitmq.md); queue_arguments={"x-queue-version": 2} picks it.
    args: dict[str, Any] = {"x-queue-type": queue_type}
    if queue_type == "quorum" and quorum_replicas is not None:
        # How many cluster nodes hold a replica (the broker caps it at the node count).
        args["x-quorum-initial-group-size"] = quorum_replicas
    return args


def _quorum_safe_dead_lettering() -> dict[str, Any]:
    # Quorum queues dead-letter at most once by default; at-least-once needs
    # reject-publish overflow. Classic queues have no such setting.
    return {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


# -- declaring ---------------------------------------------------------------
# On a robust channel: aio-pika declares these again after every reconnect.


async def declare_work_queue(
    channel: AbstractChannel,
    queue: str,
    *,
    arguments: dict[str, Any],
    queue_type: QueueType,
    exchange: AbstractExchange | None,
    quorum_replicas: int | None = None,
) -> None:
    """The work queue, its dead-letter exchange and queue; bound to ``exchange`` if given."""
    dlx = await channel.declare_exchange(
        dead_letter_exchange(queue), aio_pika.ExchangeType.FANOUT, durable=True
    )
    dlq = await channel.declare_queue(
        dead_letter_queue(queue),
        durable=True,
        arguments=dead_letter_queue_arguments(queue_type, quorum_replicas),
    )
    await dlq.bind(dlx, routing_key="")
    work = await channel.declare_queue(queue, durable=True, arguments=arguments)
    if exchange is not None:
        await work.bind(exchange, routing_key=queue)


async def declare_work_queues(
    channel: AbstractChannel,
    targets: list[str],
    *,
    queue_type: QueueType,
    exchange_name: str,
    exchange_type: str,
    max_priority: int,
    message_ttl: float | None,
    delivery_limit: int | None,
    extra: dict[str, Any],
    quorum_replicas: int | None = None,
) -> None:
    """Declare ``targets`` as :func:`declare_work_queue` does, bound to ``exchange_name`` if set.

    A queue or exchange that exists with other settings is a :class:`ConfigurationError`.
    """
    try:
        exchange = None
        if exchange_name:
            exchange = await channel.declare_exchange(exchange_name, exchange_type, durable=True)
        for queue in targets:
            arguments = work_queue_arguments(
                queue_type,
                queue=queue,
                max_priority=max_priority,
                message_ttl=message_ttl,
                delivery_limit=delivery_limit,
                extra=extra,
                quorum_replicas=quorum_replicas,
            )
            await declare_work_queue(
                channel,
                queue,
                arguments=arguments,
                queue_type=queue_type,
                exchange=exchange,
                quorum_replicas=quorum_replicas,
            )
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise ConfigurationError(
            f"RabbitMQ refused the declaration of {targets!r}: {exc}. A queue or exchange "
            "of that name exists with other settings (queue_type, message_ttl, "
            "delivery_limit, quorum_replicas, priorities, queue_arguments): keep its "
            "settings or delete it"
        ) from None


async def declare_ladder_level(
    channel: AbstractChannel,
    queue_type: QueueType,
    *,
    destination: Destination,
    level: int,
    lower: AbstractExchange | None,
    quorum_replicas: int | None = None,
) -> AbstractExchange:
    """One level of a delay ladder; ``lower`` is the level below (``None`` for level 0)."""
    prefix = destination.ladder_prefix
    name = ladder_name(prefix, level)
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
    arguments = ladder_queue_arguments(
        queue_type,
        prefix=prefix,
        level=level,
        destination=destination,
        quorum_replicas=quorum_replicas,
    )
    queue = await channel.declare_queue(name, durable=True, arguments=arguments)
    await queue.bind(exchange, routing_key=ladder_binding_key(level, "1"))
    if lower is not None:
        await lower.bind(exchange, routing_key=ladder_binding_key(level, "0"))
    return exchange
