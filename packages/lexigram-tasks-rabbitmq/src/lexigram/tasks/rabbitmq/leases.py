"""Leases on AMQP: an unacknowledged delivery held by this connection.

The broker keeps a delivered message until the channel that received it
acks or rejects it, and hands it out again when that channel closes. That
is the lease. A lease also lapses after ``lease_seconds`` without an ack,
nack or ``extend_lease``: this process then returns the message to the
queue itself (``basic.nack`` with requeue), so a stuck handler behaves as on
every other backend.

A delivery tag only means something on the channel that delivered it, so a
lease remembers its channel and that channel's generation; after a reconnect
(a new generation) it cannot be acked any more, and the broker has already
requeued the message. When that message comes back to this process, the
book recognises it by its body: it is attached to the job still running
here, or acked at once if the job finished meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp import commands as spec

from lexigram.tasks.rabbitmq.errors import CONNECTION_ERRORS

logger = logging.getLogger("lexigram.tasks.rabbitmq")

#: How many messages returned by a lost connection are remembered.
REMEMBERED: Final = 10_000
#: Acks sent this recently are treated as lost when the connection drops.
RECENT_ACKS: Final = 1024


class LeaseState(enum.Enum):
    HELD = "held"
    SETTLED = "settled"
    LAPSED = "lapsed"


@dataclass(eq=False, slots=True)
class Lease:
    """One delivered, not yet settled message (the ``Delivery.token``)."""

    channel: AbstractChannel
    tag: int
    queue: str
    body: bytes
    properties: spec.Basic.Properties = field(repr=False)
    #: The consumer that delivered it (``None`` for ``basic.get``).
    consumer: str | None = None
    #: Which incarnation of the consumer channel delivered it (bumped on reconnect).
    generation: int = 0
    state: LeaseState = LeaseState.HELD
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def held(self) -> bool:
        return self.state is LeaseState.HELD

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class LeaseBook:
    """Every lease of one connection, the acks that settle them, and what a reconnect returns."""

    def __init__(self) -> None:
        self.held: set[Lease] = set()
        self.generation = 0
        self._outstanding: dict[AbstractChannel, set[int]] = {}
        # Bodies of messages the broker will redeliver because our connection
        # dropped: settled here already, or buffered and never started.
        self._settled_unacked = BoundedSet(REMEMBERED)
        self._unstarted = BoundedSet(REMEMBERED)
        self._recent_acks: collections.deque[bytes] = collections.deque(maxlen=RECENT_ACKS)

    # -- delivery tags ---------------------------------------------------------

    def track(self, channel: AbstractChannel, tag: int) -> None:
        """A message arrived on ``channel`` and is unacked (buffered or leased)."""
        self._outstanding.setdefault(channel, set()).add(tag)

    def untrack(self, channel: AbstractChannel, tag: int) -> None:
        outstanding = self._outstanding.get(channel)
        if outstanding is not None:
            outstanding.discard(tag)

    async def ack_tags(self, channel: AbstractChannel, tags: list[int]) -> None:
        """Ack ``tags`` in as few frames as ``basic.ack(multiple=True)`` safely allows."""
        outstanding = self._outstanding.get(channel, set())
        upto, singles = ack_plan(tags, outstanding)
        # wait=False: queued for the socket in order; an ack lost with the
        # connection is covered by the recent-acks memory (connection_lost).
        if upto is not None:
            await channel.basic_ack(upto, multiple=True, wait=False)
            outstanding.difference_update([t for t in outstanding if t <= upto])
        for tag in singles:
            await channel.basic_ack(tag, wait=False)
            outstanding.discard(tag)

    # -- leases ----------------------------------------------------------------

    def lease(self, queue: str, message: DeliveredMessage, lease_seconds: float) -> Lease:
        lease = Lease(
            message.channel,
            delivery_tag(message),
            queue,
            message.body,
            message.header.properties,
            consumer_tag(message),
            self.generation,
        )
        self.held.add(lease)
        self.arm(lease, lease_seconds)
        return lease

    def owned(self, token: Any) -> Lease | None:
        """The lease behind a delivery token, if it is still held by this book."""
        if isinstance(token, Lease) and token.held and token in self.held:
            return token
        return None

    def held_by(self, consumers: set[str]) -> int:
        return sum(1 for lease in self.held if lease.consumer in consumers)

    def arm(self, lease: Lease, lease_seconds: float) -> None:
        lease.stop_timer()
        loop = asyncio.get_running_loop()
        lease.timer = loop.call_later(lease_seconds, self._lapse, lease)

    def _lapse(self, lease: Lease) -> None:
        """The lease ran out unsettled: give the message back to the queue."""
        if not lease.held:
            return
        lease.state = LeaseState.LAPSED
        lease.timer = None
        self.held.discard(lease)
        if lease.generation == self.generation:
            self.untrack(lease.channel, lease.tag)
            task = asyncio.ensure_future(lease.channel.basic_nack(lease.tag, requeue=True))
            task.add_done_callback(log_failure)

    async def finish(self, leases: Iterable[Lease]) -> None:
        """Mark leases settled and ack their messages (lost acks are remembered)."""
        by_channel: dict[AbstractChannel, list[Lease]] = {}
        for lease in leases:
            lease.state = LeaseState.SETTLED
            lease.stop_timer()
            self.held.discard(lease)
            by_channel.setdefault(lease.channel, []).append(lease)
        for channel, group in by_channel.items():
            if group[0].generation != self.generation:
                for lease in group:  # its channel died: see settle_known_redelivery
                    self._settled_unacked.add(lease.body)
                continue
            try:
                await self.ack_tags(channel, [lease.tag for lease in group])
                self._recent_acks.extend(lease.body for lease in group)
            except CONNECTION_ERRORS:
                for lease in group:
                    self._settled_unacked.add(lease.body)

    # -- redeliveries after our own reconnect -----------------------------------

    async def settle_known_redelivery(self, message: DeliveredMessage) -> bool:
        """Handle a redelivery caused by our own lost connection; whether it was one.

        A message this process already settled (its ack was lost with the
        connection) is acked again and dropped; one whose job still runs here
        is attached to the running job's lease, so it is not run twice.
        """
        channel, tag, body = message.channel, delivery_tag(message), message.body
        if self._settled_unacked.take(body):
            await self.ack_tags(channel, [tag])
            return True
        for lease in self.held:
            if lease.generation != self.generation and lease.body == body:
                lease.channel, lease.tag = channel, tag
                lease.consumer, lease.generation = consumer_tag(message), self.generation
                return True
        return False

    def was_returned_unstarted(self, body: bytes) -> bool:
        """Whether this process's lost connection returned the message unstarted (once).

        Only this process knows: another one reads the redelivery as a lost run.
        """
        return self._unstarted.take(body)

    def connection_lost(self, buffered: Iterable[DeliveredMessage]) -> None:
        """The channel is gone: a new generation starts; acks in flight may be lost."""
        self.generation += 1
        for message in buffered:
            self._unstarted.add(message.body)
        for body in self._recent_acks:
            self._settled_unacked.add(body)
        self._recent_acks.clear()
        self._outstanding.clear()

    def clear(self) -> None:
        for lease in self.held:
            lease.stop_timer()
        self.held.clear()
        self._outstanding.clear()


def ack_plan(to_ack: Iterable[int], outstanding: Iterable[int]) -> tuple[int | None, list[int]]:
    """Split acks into one ``multiple=True`` ack and single acks.

    ``basic.ack(tag, multiple=True)`` acks every outstanding tag up to
    ``tag`` on the channel, so it may only cover a prefix of the channel's
    outstanding tags that consists entirely of tags being acked. Returns that
    prefix's last tag (or ``None``) and the tags left to ack one by one.
    """
    acking = sorted(set(to_ack))
    if not acking:
        return None, []
    acking_set = set(acking)
    prefix_end: int | None = None
    for tag in sorted(set(outstanding) | acking_set):
        if tag not in acking_set:
            break
        prefix_end = tag
    if prefix_end is None:
        return None, acking
    rest = [tag for tag in acking if tag > prefix_end]
    if prefix_end == acking[0]:  # a prefix of one: a plain ack says the same
        return None, acking
    return prefix_end, rest


class BoundedSet:
    """Message bodies remembered for a while: the oldest go once ``size`` is reached."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def add(self, item: bytes) -> None:
        self._items[item] = None
        self._items.move_to_end(item)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def take(self, item: bytes) -> bool:
        """Remove ``item``; whether it was there."""
        return self._items.pop(item, False) is None

    def __len__(self) -> int:
        return len(self._items)


def delivery_tag(message: DeliveredMessage) -> int:
    delivery = message.delivery
    assert isinstance(delivery, spec.Basic.Deliver | spec.Basic.GetOk)
    assert delivery.delivery_tag is not None, "a delivered message has a delivery tag"
    return delivery.delivery_tag


def consumer_tag(message: DeliveredMessage) -> str | None:
    return getattr(message.delivery, "consumer_tag", None)


def log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("RabbitMQ housekeeping failed: %s", task.exception())
