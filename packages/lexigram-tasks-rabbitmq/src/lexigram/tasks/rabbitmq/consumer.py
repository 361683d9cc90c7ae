"""Taking messages from the broker: consumers with a prefetch window, and ``basic.get``.

While someone waits in ``dequeue``, a consumer per queue fills a local
buffer; its prefetch is the number of jobs the worker asked for (its free
slots), so a worker never holds more messages than it can start. A consumer
that nobody has asked for jobs for :data:`IDLE_SECONDS` is cancelled, and
what it buffered goes back to the queue for other workers (through
``give_back``: as fresh copies, so that no process takes them for lost runs).
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final, cast

from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp import commands as spec

from lexigram.tasks.rabbitmq.leases import LeaseBook, consumer_tag, delivery_tag, log_failure

#: Cancel a consumer after this long without anyone asking for jobs.
IDLE_SECONDS: Final = 0.25

Received = tuple[str, DeliveredMessage]  # (queue, message)


class Consumer:
    """The consuming side of one connection: consumers, their buffer, their prefetch."""

    def __init__(
        self,
        channel: Callable[[], AbstractRobustChannel],
        queues: Sequence[str],
        leases: LeaseBook,
        *,
        give_back: Callable[[str, DeliveredMessage], Awaitable[None]],
        prefetch: int | None,
        quorum: bool,
    ) -> None:
        self._channel = channel
        self._give_back = give_back
        self.queues = tuple(queues)
        self.leases = leases
        self.prefetch = prefetch
        self.quorum = quorum
        self.buffer: collections.deque[Received] = collections.deque()
        self._waiters: list[asyncio.Future[None]] = []
        self._queue_of_tag: dict[str, str] = {}  # every consumer tag on the channel
        self.active: set[str] = set()  # consumers not cancelled
        self._window = 0  # prefetch of the active consumers
        self._lock = asyncio.Lock()
        self._takers = 0  # dequeue calls in progress
        self._idle_timer: asyncio.TimerHandle | None = None
        self._get_cursor = 0

    async def raw_channel(self) -> AbstractChannel:
        return await self._channel().get_underlay_channel()

    # -- who is asking ---------------------------------------------------------

    def begin(self) -> None:
        """A ``dequeue`` starts: keep the consumers."""
        self._takers += 1
        self._cancel_idle_timer()

    def end(self) -> None:
        self._takers -= 1
        self._schedule_idle_check()

    # -- messages --------------------------------------------------------------

    def pop(self) -> Received | None:
        while self.buffer:
            queue, message = self.buffer.popleft()
            if not message.channel.is_closed:
                return queue, message
            # Its channel died: the broker has put the message back already.
        return None

    async def get_one(self) -> Received | None:
        """``basic.get`` from each queue in turn; ``None`` when all are empty."""
        channel = await self.raw_channel()
        for _ in range(len(self.queues)):
            queue = self.queues[self._get_cursor % len(self.queues)]
            message = await channel.basic_get(queue, no_ack=False)
            if isinstance(message.delivery, spec.Basic.GetOk):
                self.leases.track(channel, delivery_tag(message))
                return queue, message
            self._get_cursor += 1
        return None

    def _on_message(self, message: DeliveredMessage) -> Coroutine[Any, Any, None]:
        """Buffer a delivery and wake ``dequeue``, as aiormq reads it.

        A plain function: aiormq wraps what a consumer callback returns in a
        task, and an ``async def`` would only start on the next loop turn, one
        turn later for every job.
        """
        queue = self._queue_of_tag.get(cast(str, consumer_tag(message)))
        tag = delivery_tag(message)
        if queue is None:  # not ours (cannot happen): hand it back
            return _requeue(message.channel, tag)
        self.leases.track(message.channel, tag)
        self.buffer.append((queue, message))
        self._wake()
        if consumer_tag(message) not in self.active:
            # Sent before a cancel took effect (quorum queues do that): if nobody
            # takes it, the idle check gives it back.
            self._schedule_idle_check()
        return _nothing()

    async def wait(self, timeout: float) -> None:
        """Return when a message arrives (or the connection drops), or after ``timeout``.

        A plain future and timer: ``asyncio.wait_for`` would add a task and two
        loop turns to every job's pickup latency.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(timeout, _resolve, waiter)
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.remove(waiter)

    def _wake(self) -> None:
        for waiter in self._waiters:
            _resolve(waiter)

    # -- consumers -------------------------------------------------------------

    async def ensure(self, max_jobs: int) -> None:
        """Consume with room for ``max_jobs`` more deliveries.

        The prefetch window counts a consumer's unacked messages, held leases
        included, and cannot be changed for a running consumer; when the
        windows are too small for the slots the worker has free, a further
        consumer adds the missing room. Replacing the consumer instead would
        race with its deliveries: a quorum queue takes back a delivery that
        crosses the cancel and counts it as a redelivery, a lost run. The
        windows add up to at most the worker's slots.
        """
        if self._has_room(max_jobs):
            return
        async with self._lock:
            if self._has_room(max_jobs):
                return
            await self._start(self.prefetch or max_jobs - self._room())

    def _has_room(self, max_jobs: int) -> bool:
        """Whether buffered messages plus what the consumers may still send cover ``max_jobs``."""
        if len(self.buffer) >= max_jobs:
            return True
        if not self.active:
            return False
        return self.prefetch is not None or self._room() >= max_jobs

    def _room(self) -> int:
        """Buffered messages plus the deliveries the active consumers' windows still allow."""
        buffered = len(self.buffer)
        if not self.active:
            return buffered
        in_flight = self.leases.held_by(self.active)
        in_flight += sum(1 for _, m in self.buffer if consumer_tag(m) in self.active)
        return buffered + self._window - in_flight

    async def _start(self, prefetch: int) -> None:
        await self._channel().set_qos(prefetch_count=prefetch)
        channel = await self.raw_channel()
        self._window += prefetch
        for queue in self.queues:
            # Registered before consuming: deliveries may arrive before consume-ok.
            tag = f"lexigram.{uuid.uuid4().hex}"
            self._queue_of_tag[tag] = queue
            self.active.add(tag)
            await channel.basic_consume(queue, self._on_message, no_ack=False, consumer_tag=tag)

    async def _cancel(self) -> None:
        tags, self.active = self.active, set()
        self._window = 0
        if not tags:
            return
        channel = await self.raw_channel()
        if channel.is_closed:
            return
        if self.quorum:
            await self._flush_quorum_deliveries(channel)
        for tag in tags:
            await channel.basic_cancel(tag)

    async def cancel(self) -> None:
        async with self._lock:
            await self._cancel()

    async def pause(self) -> None:
        """Cancel idle consumers so that no delivery is in flight (for exact counts)."""
        async with self._lock:
            if self._takers or not self.active:
                return
            await self._cancel()
            self._schedule_idle_check()

    async def stop_now(self, *, closing: bool = False) -> list[Received]:
        """Cancel the consumers at once if nobody waits for jobs; take what they buffered.

        ``closing``: the connection is about to close, so even while a
        ``dequeue`` waits (it then finds nothing).
        """
        async with self._lock:
            if self._takers and not closing:
                return []
            self._cancel_idle_timer()
            await self._cancel()
            taken = []
            while (item := self.pop()) is not None:
                taken.append(item)
            return taken

    async def _flush_quorum_deliveries(self, channel: AbstractChannel) -> None:
        """Receive the deliveries a quorum queue is sending, before its consumers are cancelled.

        A quorum queue returns a delivery that crosses the cancel to the queue
        itself, with ``x-delivery-count`` one higher: every process would read
        it as a run lost with its worker. A ``basic.get`` is ordered after the
        deliveries that the acks sent before it released, so once it answers
        they are in the buffer. A message it returns is buffered too. (A job
        published between this answer and the cancel can still cross it.)
        """
        for queue in self.queues:
            message = await channel.basic_get(queue, no_ack=False)
            if isinstance(message.delivery, spec.Basic.GetOk):
                self.leases.track(channel, delivery_tag(message))
                self.buffer.append((queue, message))

    # -- going idle --------------------------------------------------------------

    def _schedule_idle_check(self) -> None:
        if self._takers == 0 and (self.active or self.buffer):
            self._cancel_idle_timer()
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(IDLE_SECONDS, self._on_idle)

    def _on_idle(self) -> None:
        self._idle_timer = None
        if self._takers == 0 and (self.active or self.buffer):
            task = asyncio.ensure_future(self._stop())
            task.add_done_callback(log_failure)

    async def _stop(self) -> None:
        """Nobody is asking for jobs: cancel the consumers and return what they buffered."""
        async with self._lock:
            if self._takers or not (self.active or self.buffer):
                return
            await self._cancel()
            while (item := self.pop()) is not None:
                await self._give_back(*item)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def connection_lost(self) -> None:
        """The channel is gone, with its consumers and everything buffered."""
        self.leases.connection_lost(message for _, message in self.buffer)
        self._queue_of_tag.clear()
        self.active.clear()
        self._window = 0
        self.buffer.clear()
        self._wake()

    def clear(self) -> None:
        """Forget everything (the connection is being closed); wake waiting ``dequeue`` calls."""
        self._cancel_idle_timer()
        self.buffer.clear()
        self._queue_of_tag.clear()
        self.active.clear()
        self._window = 0
        self._wake()


async def _nothing() -> None:
    pass


async def _requeue(channel: AbstractChannel, tag: int) -> None:
    await channel.basic_nack(tag, requeue=True)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
