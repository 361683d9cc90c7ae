"""Publishing with publisher confirms, straight to a destination or through the delay ladder.

Every publish is ``mandatory`` and waits for the broker's confirm: a message
no queue would receive raises :class:`PublishRefusedError` instead of
vanishing. If the connection drops while a confirm is pending, the message
is published again after the reconnect (at least once, rarely twice). A
``basic.nack`` means the broker did not store the message: a quorum queue
answers so while it has no leader (a cluster node died and the others are
electing one), so the message is sent again, on a new channel and after a
growing pause, for up to ``reconnect_timeout`` seconds before the nack is
raised. The new channel matters: on RabbitMQ 3.10 a channel nacked by a
leaderless quorum queue went on nacking every publish to it for minutes
after the new leader was elected, while a new channel was accepted at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Sequence
from typing import Final, cast

import aiormq
from aio_pika.abc import AbstractExchange, AbstractRobustChannel
from aiormq.abc import AbstractChannel
from pamqp import commands as spec

from lexigram.tasks.errors import BackendConnectionError, JobTooLargeError
from lexigram.tasks.rabbitmq import topology
from lexigram.tasks.rabbitmq.errors import CONNECTION_ERRORS, PublishRefusedError
from lexigram.tasks.rabbitmq.topology import Destination, QueueType

#: Publishing attempts across reconnects before giving up.
PUBLISH_ATTEMPTS: Final = 3

#: First and longest pause before a nacked message is sent again (seconds).
NACK_PAUSES: Final = (0.05, 1.0)

#: The broker's answers that mean "not this message" rather than "connection lost".
#: A refused publish closes the channel (``PRECONDITION_FAILED``, e.g. over
#: ``max_message_size``), which would otherwise look like a lost connection.
REFUSALS = (aiormq.exceptions.DeliveryError, aiormq.exceptions.ChannelPreconditionFailed)

_TOO_LARGE = re.compile(r"message size (\d+) is larger than configured max size (\d+)")

#: What to publish: exchange, routing key, body, properties.
Publication = tuple[str, str, bytes, spec.Basic.Properties]


class Publisher:
    """The publishing side of one connection, and the delay ladders it has declared."""

    def __init__(
        self,
        channel: Callable[[], AbstractRobustChannel],
        declaring: Callable[[], AbstractRobustChannel],
        *,
        queue_type: QueueType,
        quorum_replicas: int | None = None,
        describe_failure: Callable[[BaseException], str],
        reconnect_timeout: float,
    ) -> None:
        self._channel = channel
        self._declaring = declaring
        self.queue_type = queue_type
        self.quorum_replicas = quorum_replicas
        self._describe_failure = describe_failure
        self.reconnect_timeout = reconnect_timeout
        self._ladder_exchanges: dict[str, AbstractExchange] = {}
        self._ladder_levels: dict[str, int] = {}
        self._ladder_lock = asyncio.Lock()
        self._replacing = asyncio.Lock()

    @property
    def ladder_prefixes(self) -> set[str]:
        """Prefixes of the delay ladders declared through this publisher."""
        return set(self._ladder_levels)

    def clear(self) -> None:
        self._ladder_exchanges.clear()
        self._ladder_levels.clear()

    async def publish(
        self,
        body: bytes,
        properties: spec.Basic.Properties,
        destination: Destination,
        delay: float = 0.0,
    ) -> None:
        """Publish one message and wait for its confirm."""
        await self.publish_confirmed(await self.address(body, properties, destination, delay))

    async def address(
        self,
        body: bytes,
        properties: spec.Basic.Properties,
        destination: Destination,
        delay: float,
    ) -> Publication:
        """Where a message goes: its destination, or the delay ladder's entry."""
        if delay <= 0:
            return destination.exchange, destination.routing_key, body, properties
        delay_ms = topology.ladder_delay_ms(delay)
        top = topology.ladder_top_level(delay_ms)
        await self._ensure_ladder(destination, top)
        exchange = topology.ladder_name(destination.ladder_prefix, top)
        return exchange, topology.ladder_routing_key(delay_ms), body, properties

    async def publish_batch(self, batch: Sequence[Publication]) -> None:
        """Write every message, then await all the confirms; retry what a reconnect lost."""
        if not batch:
            return
        try:
            channel = await self._channel().get_underlay_channel()
        except CONNECTION_ERRORS:
            retry = list(batch)
        else:
            results = await asyncio.gather(
                *(_send(channel, item) for item in batch), return_exceptions=True
            )
            refused = [
                (len(batch[i][2]), i)
                for i, r in enumerate(results)
                if _is_refusal(r) and not _is_nack(r)
            ]
            if refused:
                # A refusal closes the channel, failing the messages in flight with it
                # too: the largest is the one most likely refused for its size.
                culprit = max(refused)[1]
                raise _refusal(cast(BaseException, results[culprit]), batch[culprit]) from None
            retry = []
            for item, result in zip(batch, results, strict=True):
                if isinstance(result, CONNECTION_ERRORS) or _is_nack(result):
                    retry.append(item)
                elif isinstance(result, BaseException):
                    raise result
        for item in retry:
            await self.publish_confirmed(item)

    async def publish_confirmed(self, item: Publication) -> None:
        publisher = self._channel()
        loop = asyncio.get_running_loop()
        lost = 0
        pause, longest = NACK_PAUSES
        give_up = loop.time() + self.reconnect_timeout
        while True:
            try:
                channel = await publisher.get_underlay_channel()
                await _send(channel, item)
                return
            except REFUSALS as exc:
                if not _is_nack(exc) or loop.time() + pause > give_up:
                    raise _refusal(exc, item) from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, longest)
                await self._replace(publisher, channel, give_up)
            except CONNECTION_ERRORS as exc:
                lost += 1
                if lost == PUBLISH_ATTEMPTS:
                    raise BackendConnectionError(self._describe_failure(exc)) from None
                # A lost confirm means "unknown", not "refused": publish again once
                # the robust connection is back.
                await asyncio.wait_for(publisher.ready(), self.reconnect_timeout)

    async def _replace(
        self, publisher: AbstractRobustChannel, nacked: AbstractChannel, give_up: float
    ) -> None:
        """Close the channel that nacked; the robust channel opens a new one by itself.

        Concurrent publishes on it fail as on a lost connection and are sent again;
        of several publishes nacked at once, the first closes it.
        """
        async with self._replacing:
            if not nacked.is_closed:
                await _close(nacked)
        loop = asyncio.get_running_loop()
        while loop.time() < give_up:
            with contextlib.suppress(TimeoutError, *CONNECTION_ERRORS):
                await asyncio.wait_for(publisher.ready(), max(give_up - loop.time(), 0.01))
                current = await publisher.get_underlay_channel()
                if current is not nacked and not current.is_closed:
                    return
            await asyncio.sleep(0.01)

    async def _ensure_ladder(self, destination: Destination, top: int) -> None:
        """Declare the ladder ending at ``destination`` up to level ``top``."""
        prefix = destination.ladder_prefix
        if self._ladder_levels.get(prefix, -1) >= top:
            return
        async with self._ladder_lock:
            for level in range(self._ladder_levels.get(prefix, -1) + 1, top + 1):
                lower = self._ladder_exchanges.get(topology.ladder_name(prefix, level - 1))
                self._ladder_exchanges[
                    topology.ladder_name(prefix, level)
                ] = await topology.declare_ladder_level(
                    self._declaring(),
                    self.queue_type,
                    destination=destination,
                    level=level,
                    lower=lower,
                    quorum_replicas=self.quorum_replicas,
                )
                self._ladder_levels[prefix] = level


async def _send(channel: AbstractChannel, item: Publication) -> None:
    exchange, routing_key, body, properties = item
    # wait=False: no need to wait for the socket write, only for the confirm.
    await cast(aiormq.Channel, channel).basic_publish(
        body,
        exchange=exchange,
        routing_key=routing_key,
        properties=properties,
        mandatory=True,
        wait=False,
    )


async def _close(channel: AbstractChannel) -> None:
    try:
        await channel.close()
    except CONNECTION_ERRORS:
        pass
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        # aiormq's own closing task was cancelled: the connection went down meanwhile.


def _is_refusal(result: object) -> bool:
    return isinstance(result, REFUSALS)


def _is_nack(result: object) -> bool:
    """A ``basic.nack``: the broker did not store the message (not a return or a closed channel)."""
    return (
        isinstance(result, aiormq.exceptions.DeliveryError)
        and not isinstance(result, aiormq.exceptions.PublishError)
        and isinstance(result.frame, spec.Basic.Nack)
    )


def _refusal(exc: BaseException, item: Publication) -> BaseException:
    exchange, routing_key, _, properties = item
    if (too_large := _TOO_LARGE.search(str(exc))) is not None:
        size, limit = (int(group) for group in too_large.groups())
        return JobTooLargeError(
            f"RabbitMQ refused job {properties.message_id} of task {properties.message_type!r}: "
            f"the message is {size:,} bytes, over the broker's max_message_size of {limit:,} "
            "(a hard limit set in rabbitmq.conf; max_job_bytes is above it): pass a reference "
            "to large data instead of the data itself"
        )
    if isinstance(exc, aiormq.exceptions.PublishError):
        return PublishRefusedError(
            f"RabbitMQ could not route a message to exchange {exchange or '(default)'!r} "
            f"with routing key {routing_key!r}: no queue is bound there ({exc})"
        )
    if _is_nack(exc):
        return PublishRefusedError(
            f"RabbitMQ did not store job {properties.message_id} (basic.nack, sent again for "
            "connect_timeout seconds): the queue is full with x-overflow reject-publish, or a "
            "quorum queue has had no leader for that long (a majority of its nodes is down)"
        )
    return PublishRefusedError(f"RabbitMQ refused a message: {exc}")
