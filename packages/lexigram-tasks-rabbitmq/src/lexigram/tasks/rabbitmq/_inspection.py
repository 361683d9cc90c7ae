"""Counting and reading a RabbitMQ queue's jobs: ``counts`` and ``dead_letters``.

The broker reports ready messages per queue (a passive declare); delayed
jobs are counted over the TTL ladder's levels, dead letters read unacked on
a channel of their own.
"""

from __future__ import annotations

import aiormq
from pamqp import commands as spec

from lexigram.tasks.protocol import DeadLetter, QueueCounts
from lexigram.tasks.rabbitmq import messages, topology
from lexigram.tasks.rabbitmq._plumbing import Plumbing
from lexigram.tasks.rabbitmq.consumer import Consumer
from lexigram.tasks.rabbitmq.leases import LeaseBook
from lexigram.tasks.rabbitmq.topology import Destination


class Inspecting(Plumbing):
    """``counts`` and ``dead_letters`` (a base of :class:`RabbitMQTaskQueue`)."""

    consumed_queues: tuple[str, ...]
    _consumer: Consumer
    _leases: LeaseBook

    async def counts(self) -> QueueCounts:
        """Counts over the consumed queues.

        ``running`` counts the deliveries this instance holds: AMQP does not
        report other consumers' unacked messages (the management API does).
        An idle consumer is cancelled first, so that no delivery is in flight
        while counting; during a ``dequeue`` the counts may be off by those.
        """
        self._require_connection()
        await self._consumer.pause()
        channel = await self._consumer.raw_channel()
        ready = failed = delayed = 0
        for queue in self.consumed_queues:
            ready += (await channel.queue_declare(queue, passive=True)).message_count or 0
            dlq = topology.dead_letter_queue(queue)
            failed += (await channel.queue_declare(dlq, passive=True)).message_count or 0
            delayed += await self._count_ladder(Destination("", queue).ladder_prefix)
        ready += sum(1 for _, message in self._consumer.buffer if not message.channel.is_closed)
        return QueueCounts(
            ready=ready, delayed=delayed, running=len(self._leases.held), failed=failed
        )

    async def _count_ladder(self, prefix: str) -> int:
        """Messages in a delay ladder; its levels exist from 0 up to some level."""
        channel = await self._temporary_channel()
        total = 0
        try:
            for level in range(topology.LADDER_LEVELS):
                name = topology.ladder_name(prefix, level)
                result = await channel.queue_declare(name, passive=True)
                total += result.message_count or 0
        except aiormq.exceptions.ChannelNotFoundEntity:
            return total  # the broker closed the channel: nothing left to close
        await channel.close()
        return total

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Read (without removing) the dead-letter queues, oldest first.

        The messages are fetched unacked on a channel of their own, which is
        then closed, so the broker puts them back in place. While this runs,
        another consumer of a dead-letter queue does not see them.
        """
        self._require_connection()
        found: list[DeadLetter] = []
        channel = await self._temporary_channel()
        try:
            for queue in self.consumed_queues:
                dlq = topology.dead_letter_queue(queue)
                for _ in range(limit):
                    message = await channel.basic_get(dlq, no_ack=False)
                    if not isinstance(message.delivery, spec.Basic.GetOk):
                        break
                    found.append(messages.to_dead_letter(message.body, message.header.properties))
        finally:
            await channel.close()
        found.sort(key=lambda dead: dead.failed_at)
        return found[:limit]
