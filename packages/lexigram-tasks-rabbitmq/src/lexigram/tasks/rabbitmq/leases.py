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
requeued the message.
"""

from __future__ import annotations

import asyncio
import collections
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiormq.abc import AbstractChannel
from pamqp import commands as spec


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
