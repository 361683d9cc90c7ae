"""RabbitMQTaskQueue: the task-queue protocol on AMQP 0-9-1, with aio-pika.

How the protocol maps onto the broker (``docs/backends/rabbitmq.md`` has the
user's view):

- enqueue: a persistent message, published with ``mandatory`` and awaited
  until the broker confirms it;
- dequeue: a consumer with a prefetch window fills a local buffer while
  someone waits in ``dequeue``; ``wait=0`` pulls with ``basic.get``;
- lease: the unacked delivery (see :mod:`.leases`);
- nack with requeue: publish the job as it is now (confirmed), then ack the
  delivery, so a crash between the two duplicates the job but never loses it;
- nack without requeue: publish to the queue's dead-letter exchange with the
  reason in the headers (confirmed), then ack;
- delays: the TTL ladder of :mod:`.topology`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, cast
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from lexigram.tasks.errors import (
    BackendConnectionError,
    ConfigurationError,
    MalformedJobError,
)
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import (
    BaseTaskQueue,
    Capability,
    DeadLetter,
    Delivery,
    QueueCounts,
)
from lexigram.tasks.rabbitmq import messages, topology
from lexigram.tasks.rabbitmq.errors import PublishRefusedError
from lexigram.tasks.rabbitmq.leases import BoundedSet, Lease, LeaseState, ack_plan
from lexigram.tasks.rabbitmq.topology import Destination, QueueType
from lexigram.tasks.redact import redact_text, redact_url

logger = logging.getLogger("lexigram.tasks.rabbitmq")

#: A consumer nobody has asked for jobs for this long is cancelled, and the
#: messages it buffered go back to the queue for other workers.
IDLE_CONSUMER_SECONDS: Final = 0.25
#: How many returned messages (lost connection, idle consumer) are remembered.
_REMEMBERED: Final = 10_000
#: Acks sent this recently are treated as lost when the connection drops.
_RECENT_ACKS: Final = 1024
#: Publishing retries across a reconnect before giving up.
_PUBLISH_ATTEMPTS: Final = 3

_CONNECTION_ERRORS = (
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
)


class RabbitMQTaskQueue(BaseTaskQueue):
    """A task queue on RabbitMQ: durable queues, confirms, manual acks, DLX, TTL delays.

    ``amqp_url`` and ``queue_name`` are all most users set. The keyword names
    are also the ``tasks.backend`` keys of the YAML configuration.

    - ``queue_type``: ``"classic"`` (priorities 0-9 through ``x-max-priority``)
      or ``"quorum"`` (replicated; no priorities on RabbitMQ 3.x, optional
      ``delivery_limit``).
    - ``prefetch``: unacked deliveries this connection may hold per consumed
      queue; by default the ``max_jobs`` a worker asks for, which is its free
      worker slots.
    - ``queues``: further queues this instance consumes (one worker, several
      queues); ``routes`` maps task names to the routing key they are
      published with (with the default exchange, a queue name);
      ``exchange`` / ``exchange_type``: publish through a named exchange.
    - ``message_ttl``: seconds a ready job may wait before the broker
      dead-letters it (per message: the job header ``x-message-ttl``, ms).
    - ``queue_arguments``: extra ``x-`` arguments for the work queues.
    """

    system = "rabbitmq"

    def __init__(
        self,
        amqp_url: str,
        queue_name: str = "default",
        *,
        queue_type: QueueType = "classic",
        prefetch: int | None = None,
        queues: Sequence[str] = (),
        routes: Mapping[str, str] | None = None,
        exchange: str = "",
        exchange_type: str = "direct",
        message_ttl: float | None = None,
        delivery_limit: int | None = None,
        priorities: bool | None = None,
        queue_arguments: Mapping[str, Any] | None = None,
        connect_timeout: float = 10.0,
        reconnect_interval: float = 1.0,
        connection_name: str | None = None,
    ) -> None:
        if queue_type not in ("classic", "quorum"):
            raise ValueError(f"queue_type must be 'classic' or 'quorum', got {queue_type!r}")
        if prefetch is not None and prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if message_ttl is not None and message_ttl <= 0:
            raise ValueError(f"message_ttl must be > 0 seconds, got {message_ttl}")
        if delivery_limit is not None and queue_type != "quorum":
            raise ValueError("delivery_limit needs queue_type='quorum' (classic queues lack it)")
        if priorities and queue_type == "quorum":
            raise ValueError(
                "quorum queues have no 0-9 priorities; use queue_type='classic' for priorities"
            )
        if not queue_name:
            raise ValueError("queue_name must not be empty")
        self.amqp_url = amqp_url
        self.queue_name = queue_name
        self.queue_type: QueueType = queue_type
        self.prefetch = prefetch
        self.exchange = exchange
        self.exchange_type = exchange_type
        self.routes = dict(routes or {})
        self.message_ttl = message_ttl
        self.delivery_limit = delivery_limit
        self.priorities = queue_type == "classic" if priorities is None else priorities
        self.queue_arguments = dict(queue_arguments or {})
        self.connect_timeout = connect_timeout
        self.reconnect_interval = reconnect_interval
        self.connection_name = connection_name
        self.consumed_queues: tuple[str, ...] = tuple(dict.fromkeys([queue_name, *queues]))
        caps = {Capability.DELAY}
        if self.priorities:
            caps.add(Capability.PRIORITY)
        self.capabilities = frozenset(caps)

        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._consumer: AbstractRobustChannel | None = None
        # Consuming state.
        self._inbox: collections.deque[tuple[str, DeliveredMessage]] = collections.deque()
        self._generation = 0  # of the consumer channel; a reconnect starts a new one
        self._arrived = asyncio.Event()
        self._queue_of_tag: dict[str, str] = {}  # every consumer tag on the channel
        self._active_tags: set[str] = set()  # consumers not cancelled
        self._consumer_prefetch = 0
        self._consumer_lock = asyncio.Lock()
        self._dequeuing = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._get_cursor = 0
        # Leases.
        self._held: set[Lease] = set()
        self._outstanding: dict[RawChannel, set[int]] = {}
        # Bodies of messages the broker will redeliver because our connection dropped
        # or we handed them back: settled here already, or never started.
        self._settled_unacked = BoundedSet(_REMEMBERED)
        self._unstarted = BoundedSet(_REMEMBERED)
        # Acks still on their way when the connection drops are lost with it.
        self._recent_acks: collections.deque[bytes] = collections.deque(maxlen=_RECENT_ACKS)
        # Topology.
        self._exchanges: dict[str, AbstractExchange] = {}
        self._ladder_levels: dict[str, int] = {}
        self._ladder_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return (
            f"RabbitMQTaskQueue(amqp_url={redact_url(self.amqp_url)!r}, "
            f"queue_name={self.queue_name!r}, queue_type={self.queue_type!r})"
        )

    # -- lifecycle -------------------------------------------------------------

    async def connect(self) -> None:
        """Connect (robustly: reconnects and re-declares by itself) and declare the topology."""
        if self._connection is not None:
            return
        try:
            connection = await aio_pika.connect_robust(
                self.amqp_url,
                timeout=self.connect_timeout,
                reconnect_interval=self.reconnect_interval,
                client_properties={"connection_name": self._connection_label()},
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise BackendConnectionError(self._describe_failure(exc)) from None
        try:
            self._publisher = await connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._consumer = await connection.channel(publisher_confirms=False)
            connection.close_callbacks.add(self._on_connection_lost)
            self._connection = connection
            await self._declare_topology()
        except BaseException:
            self._connection = None
            await connection.close()
            raise

    async def disconnect(self) -> None:
        """Close the connection; unsettled deliveries go back to their queues."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        self._cancel_idle_timer()
        for lease in self._held:
            lease.stop_timer()
        self._held.clear()
        self._inbox.clear()
        self._outstanding.clear()
        self._queue_of_tag.clear()
        self._active_tags.clear()
        self._consumer_prefetch = 0
        self._exchanges.clear()
        self._ladder_levels.clear()
        self._publisher = self._consumer = None
        await connection.close()

    async def delete_topology(self) -> None:
        """Delete what this instance declared: its queues, their dead letters, delay ladders.

        Every message in them is lost; meant for tests and decommissioning. A
        named ``exchange`` is left alone (other applications may use it).
        """
        queues = list(self.consumed_queues)
        if not self.exchange:
            queues += [q for q in self.routes.values() if q not in queues]
        prefixes = {Destination("", q).ladder_prefix for q in queues} | set(self._ladder_levels)
        async with self._consumer_lock:
            await self._cancel_consumers()
        channel = await self._temporary_channel()
        try:
            for queue in queues:
                await channel.queue_delete(queue)
                await channel.queue_delete(topology.dead_letter_queue(queue))
                await channel.exchange_delete(topology.dead_letter_exchange(queue))
            for prefix in prefixes:
                for level in range(topology.LADDER_LEVELS):
                    await channel.queue_delete(topology.ladder_name(prefix, level))
                    await channel.exchange_delete(topology.ladder_name(prefix, level))
        finally:
            await channel.close()

    # -- enqueue ---------------------------------------------------------------

    async def enqueue(self, job: Job) -> str:
        self.check_supported(job)
        await self._publish_job(job, self._destination_for(job))
        return job.id

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        for job in jobs:
            self.check_supported(job)
        # Written in order, then every confirm awaited together.
        batch = [await self._addressed(job, self._destination_for(job)) for job in jobs]
        await self._publish_batch(batch)
        return [job.id for job in jobs]

    # -- dequeue ---------------------------------------------------------------

    async def dequeue(
        self, *, max_jobs: int = 1, lease_seconds: float = 30.0, wait: float = 0.0
    ) -> list[Delivery]:
        self._require_connection()
        if max_jobs < 1:
            return []
        self._dequeuing += 1
        self._cancel_idle_timer()
        out: list[Delivery] = []
        try:
            if wait > 0:
                await self._ensure_consuming(max_jobs)
            await self._take(out, max_jobs, lease_seconds, wait)
        except _CONNECTION_ERRORS as exc:
            # The robust connection is reconnecting: hand out what we have, and
            # give it up to ``wait`` seconds (at least one) instead of failing.
            logger.warning(
                "RabbitMQ connection lost while fetching from %r (%s); reconnecting",
                self.queue_name,
                self._redacted(exc) or type(exc).__name__,
            )
            if not out:
                await self._wait_for_reconnect(max(wait, 1.0))
        finally:
            self._dequeuing -= 1
            self._schedule_idle_check()
        return out

    async def _take(
        self, out: list[Delivery], max_jobs: int, lease_seconds: float, wait: float
    ) -> None:
        """Lease up to ``max_jobs`` messages into ``out``, waiting up to ``wait`` for the first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while len(out) < max_jobs:
            self._arrived.clear()  # before looking: a later arrival must wake us
            item = self._pop_buffered()
            if item is None and wait <= 0:
                item = await self._get_one()
            if item is None:
                remaining = deadline - loop.time()
                if out or remaining <= 0:
                    break
                if not self._active_tags:  # a reconnect dropped the consumers
                    await self._ensure_consuming(max_jobs)
                    continue
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
                continue
            delivery = await self._admit(*item, lease_seconds=lease_seconds)
            if delivery is not None:
                out.append(delivery)

    async def _wait_for_reconnect(self, timeout: float) -> None:
        publisher = self._publisher
        if publisher is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(publisher.ready(), timeout)

    def _pop_buffered(self) -> tuple[str, DeliveredMessage] | None:
        while self._inbox:
            queue, message = self._inbox.popleft()
            if not message.channel.is_closed:
                return queue, message
            # Its channel died: the broker has put the message back already.
        return None

    async def _get_one(self) -> tuple[str, DeliveredMessage] | None:
        """``basic.get`` from each consumed queue in turn; ``None`` when all are empty."""
        channel = await self._raw_consumer_channel()
        for _ in range(len(self.consumed_queues)):
            queue = self.consumed_queues[self._get_cursor % len(self.consumed_queues)]
            message = await channel.basic_get(queue, no_ack=False)
            if isinstance(message.delivery, spec.Basic.GetOk):
                self._track(channel, _tag(message))
                return queue, message
            self._get_cursor += 1
        return None

    async def _admit(
        self, queue: str, message: DeliveredMessage, *, lease_seconds: float
    ) -> Delivery | None:
        """Turn a received message into a leased delivery, or settle it on the spot."""
        delivery_info = message.delivery
        assert isinstance(delivery_info, spec.Basic.Deliver | spec.Basic.GetOk)
        channel, tag, body = message.channel, _tag(message), message.body
        properties = message.header.properties
        if delivery_info.redelivered and await self._settle_known_redelivery(channel, tag, body):
            return None
        try:
            job = Job.from_json(body)
        except MalformedJobError as exc:
            return Delivery(
                None, body, self._lease(channel, tag, queue, message, lease_seconds), str(exc)
            )
        if job.run_at is not None and job.run_at > time.time():
            # Not due yet: it came early (a longer delay than one ladder trip,
            # or a foreign producer's run_at). Send it round again.
            await self._publish(body, properties, Destination("", queue), job.run_at - time.time())
            await self._ack_tags(channel, [tag])
            return None
        messages.adopt_trace_headers(job, properties)
        redelivered = bool(delivery_info.redelivered)
        earlier = messages.redeliveries(properties, redelivered, quorum=self.queue_type == "quorum")
        if redelivered and self._unstarted.take(body):
            earlier = max(earlier - 1, 0)  # we returned it unstarted: not an attempt
        job.attempt += 1 + earlier
        return Delivery(job, body, self._lease(channel, tag, queue, message, lease_seconds))

    def _lease(
        self,
        channel: RawChannel,
        tag: int,
        queue: str,
        message: DeliveredMessage,
        lease_seconds: float,
    ) -> Lease:
        consumer = _consumer_tag(message)
        lease = Lease(
            channel,
            tag,
            queue,
            message.body,
            message.header.properties,
            consumer,
            self._generation,
        )
        self._held.add(lease)
        self._arm(lease, lease_seconds)
        return lease

    async def _settle_known_redelivery(self, channel: RawChannel, tag: int, body: bytes) -> bool:
        """Handle a redelivery caused by our own lost connection.

        A message this process already settled (its ack was lost with the
        connection) is acked again and dropped; one whose job still runs here
        is attached to the running job's lease, so it is not run twice.
        """
        if self._settled_unacked.take(body):
            await self._ack_tags(channel, [tag])
            return True
        for lease in self._held:
            if lease.generation != self._generation and lease.body == body:
                lease.channel, lease.tag = channel, tag
                lease.generation = self._generation
                return True
        return False

    # -- settling --------------------------------------------------------------

    async def ack(self, delivery: Delivery) -> None:
        lease = self._owned(delivery)
        if lease is not None:
            await self._finish([lease])

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        leases = [lease for d in deliveries if (lease := self._owned(d)) is not None]
        if leases:
            await self._finish(leases)

    async def nack(
        self, delivery: Delivery, *, requeue: bool, delay: float = 0.0, reason: str = ""
    ) -> None:
        lease = self._owned(delivery)
        if lease is None:
            return
        job = delivery.job
        if requeue and job is not None:
            if delay > 0:
                job = dataclasses.replace(job, run_at=time.time() + delay)
            await self._publish(
                job.to_bytes(), messages.job_properties(job), Destination("", lease.queue), delay
            )
        else:
            properties = messages.dead_letter_properties(
                lease.properties,
                reason=reason or "rejected",
                source_queue=lease.queue,
                attempt=job.attempt if job is not None else None,
                job_id=job.id if job is not None else None,
            )
            body = job.to_bytes() if job is not None else delivery.raw
            exchange = topology.dead_letter_exchange(lease.queue)
            await self._publish(body, properties, Destination(exchange, lease.queue))
        await self._finish([lease])

    async def extend_lease(self, deliveries: Sequence[Delivery], lease_seconds: float) -> None:
        for delivery in deliveries:
            lease = self._owned(delivery)
            if lease is not None:
                self._arm(lease, lease_seconds)

    def _owned(self, delivery: Delivery) -> Lease | None:
        lease = delivery.token
        if isinstance(lease, Lease) and lease.held and lease in self._held:
            return lease
        return None

    async def _finish(self, leases: Iterable[Lease]) -> None:
        """Mark leases settled and ack their messages (lost acks are remembered)."""
        by_channel: dict[RawChannel, list[Lease]] = {}
        for lease in leases:
            lease.state = LeaseState.SETTLED
            lease.stop_timer()
            self._held.discard(lease)
            by_channel.setdefault(lease.channel, []).append(lease)
        for channel, group in by_channel.items():
            if group[0].generation != self._generation:
                for lease in group:  # its channel died: see _settle_known_redelivery
                    self._remember_settled(lease.body)
                continue
            try:
                await self._ack_tags(channel, [lease.tag for lease in group])
                self._recent_acks.extend(lease.body for lease in group)
            except _CONNECTION_ERRORS:
                # The broker requeued them with the channel; if they come back to
                # this process they are acked on arrival instead of run again.
                for lease in group:
                    self._remember_settled(lease.body)

    async def _ack_tags(self, channel: RawChannel, tags: list[int]) -> None:
        outstanding = self._outstanding.get(channel, set())
        upto, singles = ack_plan(tags, outstanding)
        if upto is not None:
            await channel.basic_ack(upto, multiple=True)
            outstanding.difference_update([t for t in outstanding if t <= upto])
        for tag in singles:
            await channel.basic_ack(tag)
            outstanding.discard(tag)

    def _remember_settled(self, body: bytes) -> None:
        self._settled_unacked.add(body)

    def _arm(self, lease: Lease, lease_seconds: float) -> None:
        lease.stop_timer()
        loop = asyncio.get_running_loop()
        lease.timer = loop.call_later(lease_seconds, self._lapse, lease)

    def _lapse(self, lease: Lease) -> None:
        """The lease ran out unsettled: give the message back to the queue."""
        if not lease.held:
            return
        lease.state = LeaseState.LAPSED
        lease.timer = None
        self._held.discard(lease)
        if lease.generation == self._generation:
            self._untrack(lease.channel, lease.tag)
            task = asyncio.ensure_future(lease.channel.basic_nack(lease.tag, requeue=True))
            task.add_done_callback(_log_failure)

    # -- consuming -------------------------------------------------------------

    async def _ensure_consuming(self, max_jobs: int) -> None:
        """Consume with room for ``max_jobs`` more deliveries.

        The prefetch window counts a consumer's unacked messages, held leases
        included, and cannot be changed for a running consumer; when it is too
        small for the slots the worker has free, a new consumer replaces it.
        """
        if self._consumer_has_room(max_jobs):
            return
        async with self._consumer_lock:
            if self._consumer_has_room(max_jobs):
                return
            await self._cancel_consumers()
            await self._start_consumers(self.prefetch or max(1, max_jobs - len(self._inbox)))

    def _consumer_has_room(self, max_jobs: int) -> bool:
        """Whether buffered messages plus what the consumer may still send cover ``max_jobs``."""
        buffered = len(self._inbox)
        if buffered >= max_jobs:
            return True
        if not self._active_tags:
            return False
        if self.prefetch is not None:
            return True
        active = self._active_tags
        in_flight = sum(1 for lease in self._held if lease.consumer in active)
        in_flight += sum(1 for _, m in self._inbox if _consumer_tag(m) in active)
        return buffered + self._consumer_prefetch - in_flight >= max_jobs

    async def _start_consumers(self, prefetch: int) -> None:
        assert self._consumer is not None
        await self._consumer.set_qos(prefetch_count=prefetch)
        channel = await self._raw_consumer_channel()
        self._consumer_prefetch = prefetch
        for queue in self.consumed_queues:
            # Registered before consuming: deliveries may arrive before consume-ok.
            tag = f"lexigram.{uuid.uuid4().hex}"
            self._queue_of_tag[tag] = queue
            self._active_tags.add(tag)
            await channel.basic_consume(queue, self._on_message, no_ack=False, consumer_tag=tag)

    async def _cancel_consumers(self) -> None:
        tags, self._active_tags = self._active_tags, set()
        self._consumer_prefetch = 0
        if not tags or self._consumer is None:
            return
        channel = await self._raw_consumer_channel()
        if channel.is_closed:
            return
        for tag in tags:
            await channel.basic_cancel(tag)

    async def _flush_cancelled_deliveries(self) -> None:
        """Make sure deliveries sent before a cancel have arrived.

        A quorum queue may send a cancelled consumer's last deliveries after
        cancel-ok; a ``basic.get`` is ordered after them by the queue, so once
        it answers they are in the buffer. A message it returns is buffered too.
        """
        if self.queue_type != "quorum":
            return
        channel = await self._raw_consumer_channel()
        for queue in self.consumed_queues:
            message = await channel.basic_get(queue, no_ack=False)
            if isinstance(message.delivery, spec.Basic.GetOk):
                self._track(channel, _tag(message))
                self._inbox.append((queue, message))

    async def _on_message(self, message: DeliveredMessage) -> None:
        delivery_info = message.delivery
        assert isinstance(delivery_info, spec.Basic.Deliver)
        queue = self._queue_of_tag.get(cast(str, delivery_info.consumer_tag))
        tag = _tag(message)
        self._track(message.channel, tag)
        if queue is None:  # not ours (cannot happen): hand it back
            self._untrack(message.channel, tag)
            await message.channel.basic_nack(tag, requeue=True)
            return
        self._inbox.append((queue, message))
        self._arrived.set()

    def _schedule_idle_check(self) -> None:
        if self._dequeuing == 0 and (self._active_tags or self._inbox):
            self._cancel_idle_timer()
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(IDLE_CONSUMER_SECONDS, self._on_idle)

    def _on_idle(self) -> None:
        self._idle_timer = None
        if self._dequeuing == 0 and (self._active_tags or self._inbox):
            task = asyncio.ensure_future(self._stop_consuming())
            task.add_done_callback(_log_failure)

    async def _stop_consuming(self) -> None:
        """Nobody is asking for jobs: cancel the consumers and return what they buffered."""
        async with self._consumer_lock:
            if self._dequeuing or not (self._active_tags or self._inbox):
                return
            await self._cancel_consumers()
            while (item := self._pop_buffered()) is not None:
                _, message = item
                tag = _tag(message)
                self._untrack(message.channel, tag)
                self._unstarted.add(message.body)
                await message.channel.basic_nack(tag, requeue=True)

    def _on_connection_lost(self, *_: object) -> None:
        """The connection dropped: its consumers, buffered deliveries and leases are void.

        The robust connection reconnects by itself; the next ``dequeue`` starts
        consumers on the new channel. Leases of the old channel stay until
        settled: the broker has requeued their messages, and a redelivery to
        this process is matched to them (see ``_settle_known_redelivery``).
        """
        self._generation += 1
        for _queue, message in self._inbox:
            self._unstarted.add(message.body)
        for body in self._recent_acks:  # the broker may not have seen these acks
            self._settled_unacked.add(body)
        self._recent_acks.clear()
        self._queue_of_tag.clear()
        self._active_tags.clear()
        self._consumer_prefetch = 0
        self._inbox.clear()
        self._outstanding.clear()
        self._arrived.set()

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _track(self, channel: RawChannel, tag: int) -> None:
        self._outstanding.setdefault(channel, set()).add(tag)

    def _untrack(self, channel: RawChannel, tag: int) -> None:
        outstanding = self._outstanding.get(channel)
        if outstanding is not None:
            outstanding.discard(tag)

    # -- inspection --------------------------------------------------------------

    async def counts(self) -> QueueCounts:
        """Counts over the consumed queues.

        ``running`` counts the deliveries this instance holds: AMQP does not
        report other consumers' unacked messages (the management API does).
        An idle consumer is cancelled first, so that no delivery is in flight
        while counting; during a ``dequeue`` the counts may be off by those.
        """
        async with self._consumer_lock:
            if not self._dequeuing and self._active_tags:
                await self._cancel_consumers()
                await self._flush_cancelled_deliveries()
                self._schedule_idle_check()
        channel = await self._raw_consumer_channel()
        ready = failed = 0
        for queue in self.consumed_queues:
            ready += (await channel.queue_declare(queue, passive=True)).message_count or 0
            dlq = topology.dead_letter_queue(queue)
            failed += (await channel.queue_declare(dlq, passive=True)).message_count or 0
        ready += sum(1 for _, message in self._inbox if not message.channel.is_closed)
        delayed = 0
        for queue in self.consumed_queues:
            delayed += await self._count_ladder(Destination("", queue).ladder_prefix)
        return QueueCounts(ready=ready, delayed=delayed, running=len(self._held), failed=failed)

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
            return total  # the channel is closed by the broker: nothing to close
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

    # -- publishing ------------------------------------------------------------

    def _destination_for(self, job: Job) -> Destination:
        return Destination(self.exchange, self.routes.get(job.task, self.queue_name))

    async def _publish_job(self, job: Job, destination: Destination) -> None:
        await self._publish_confirmed(*await self._addressed(job, destination))

    async def _addressed(self, job: Job, destination: Destination) -> _Publication:
        if job.task in self.routes and job.queue != destination.routing_key:
            job = dataclasses.replace(job, queue=destination.routing_key)
        delay = job.run_at - time.time() if job.run_at is not None else 0.0
        ttl = messages.message_ttl_ms(job) if job.headers else None
        properties = messages.job_properties(job, expiration_ms=None if delay > 0 else ttl)
        return await self._address(job.to_bytes(), properties, destination, delay)

    async def _publish(
        self,
        body: bytes,
        properties: spec.Basic.Properties,
        destination: Destination,
        delay: float = 0.0,
    ) -> None:
        """Publish and wait for the broker's confirm; delays go through the ladder."""
        await self._publish_confirmed(*await self._address(body, properties, destination, delay))

    async def _address(
        self,
        body: bytes,
        properties: spec.Basic.Properties,
        destination: Destination,
        delay: float,
    ) -> _Publication:
        """Exchange and routing key for a message: its destination, or the delay ladder."""
        if delay <= 0:
            return destination.exchange, destination.routing_key, body, properties
        delay_ms = topology.ladder_delay_ms(delay)
        top = topology.ladder_top_level(delay_ms)
        await self._ensure_ladder(destination, top)
        exchange = topology.ladder_name(destination.ladder_prefix, top)
        return exchange, topology.ladder_routing_key(delay_ms), body, properties

    async def _publish_batch(self, batch: Sequence[_Publication]) -> None:
        """Write every message, then await all the confirms; retry what a reconnect lost."""
        if not batch:
            return
        publisher = self._require_connection()
        try:
            channel = await publisher.get_underlay_channel()
        except _CONNECTION_ERRORS:
            retry = list(batch)
        else:
            results = await asyncio.gather(
                *(self._send(channel, *item) for item in batch), return_exceptions=True
            )
            retry = []
            for item, result in zip(batch, results, strict=True):
                if isinstance(result, _CONNECTION_ERRORS):
                    retry.append(item)
                elif isinstance(result, BaseException):
                    raise self._refusal(result, item[0], item[1]) from None
        for item in retry:
            await self._publish_confirmed(*item)

    async def _publish_confirmed(
        self, exchange: str, routing_key: str, body: bytes, properties: spec.Basic.Properties
    ) -> None:
        publisher = self._require_connection()
        for attempt in range(1, _PUBLISH_ATTEMPTS + 1):
            try:
                channel = await publisher.get_underlay_channel()
                await self._send(channel, exchange, routing_key, body, properties)
                return
            except aiormq.exceptions.DeliveryError as exc:
                raise self._refusal(exc, exchange, routing_key) from None
            except _CONNECTION_ERRORS as exc:
                if attempt == _PUBLISH_ATTEMPTS:
                    raise BackendConnectionError(
                        f"publishing to {redact_url(self.amqp_url)} failed: "
                        f"{type(exc).__name__}: {self._redacted(exc)}"
                    ) from None
                # A lost confirm means "unknown", not "refused": publish again once
                # the robust connection is back (at least once; rarely twice).
                await asyncio.wait_for(publisher.ready(), self.connect_timeout)

    @staticmethod
    async def _send(
        channel: RawChannel,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: spec.Basic.Properties,
    ) -> None:
        # wait=False: no need to wait for the socket write, only for the confirm.
        await cast(aiormq.Channel, channel).basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=True,
            wait=False,
        )

    @staticmethod
    def _refusal(exc: BaseException, exchange: str, routing_key: str) -> BaseException:
        if isinstance(exc, aiormq.exceptions.PublishError):
            return PublishRefusedError(
                f"RabbitMQ could not route a message to exchange {exchange or '(default)'!r} "
                f"with routing key {routing_key!r}: no queue is bound there ({exc})"
            )
        if isinstance(exc, aiormq.exceptions.DeliveryError):
            return PublishRefusedError(f"RabbitMQ refused a message: {exc}")
        return exc

    # -- topology ----------------------------------------------------------------

    async def _declare_topology(self) -> None:
        channel = self._consumer
        assert channel is not None
        targets = list(self.consumed_queues)
        if not self.exchange:
            targets += [q for q in self.routes.values() if q not in targets]
        try:
            work_exchange = None
            if self.exchange:
                work_exchange = await channel.declare_exchange(
                    self.exchange, self.exchange_type, durable=True
                )
            for queue in targets:
                await self._declare_work_queue(channel, queue, work_exchange)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"RabbitMQ refused the declaration of {targets!r}: {exc}. A queue or exchange "
                "of that name exists with other settings (queue_type, message_ttl, "
                "delivery_limit, priorities, queue_arguments): keep its settings or delete it"
            ) from None

    async def _declare_work_queue(
        self, channel: AbstractChannel, queue: str, work_exchange: AbstractExchange | None
    ) -> None:
        dlx = await channel.declare_exchange(
            topology.dead_letter_exchange(queue), aio_pika.ExchangeType.FANOUT, durable=True
        )
        dlq = await channel.declare_queue(
            topology.dead_letter_queue(queue),
            durable=True,
            arguments=topology.dead_letter_queue_arguments(self.queue_type),
        )
        await dlq.bind(dlx, routing_key="")
        args = topology.work_queue_arguments(
            self.queue_type,
            queue=queue,
            max_priority=9 if self.priorities else 0,
            message_ttl=self.message_ttl,
            delivery_limit=self.delivery_limit,
            extra=self.queue_arguments,
        )
        work = await channel.declare_queue(queue, durable=True, arguments=args)
        if work_exchange is not None:
            await work.bind(work_exchange, routing_key=queue)

    async def _ensure_ladder(self, destination: Destination, top: int) -> None:
        prefix = destination.ladder_prefix
        if self._ladder_levels.get(prefix, -1) >= top:
            return
        channel = self._consumer
        assert channel is not None
        async with self._ladder_lock:
            for level in range(self._ladder_levels.get(prefix, -1) + 1, top + 1):
                name = topology.ladder_name(prefix, level)
                exchange = await channel.declare_exchange(
                    name, aio_pika.ExchangeType.TOPIC, durable=True
                )
                queue = await channel.declare_queue(
                    name,
                    durable=True,
                    arguments=topology.ladder_queue_arguments(
                        self.queue_type, prefix=prefix, level=level, destination=destination
                    ),
                )
                await queue.bind(exchange, routing_key=topology.ladder_binding_key(level, "1"))
                if level > 0:
                    lower = self._exchanges[topology.ladder_name(prefix, level - 1)]
                    await lower.bind(exchange, routing_key=topology.ladder_binding_key(level, "0"))
                self._exchanges[name] = exchange
                self._ladder_levels[prefix] = level

    # -- plumbing --------------------------------------------------------------

    def _require_connection(self) -> AbstractRobustChannel:
        if self._publisher is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")
        return self._publisher

    async def _raw_consumer_channel(self) -> RawChannel:
        if self._consumer is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")
        return await self._consumer.get_underlay_channel()

    async def _temporary_channel(self) -> RawChannel:
        """A plain channel for probing; a failed passive declare closes only it."""
        if self._connection is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")
        await self._connection.ready()
        transport = self._connection.transport
        assert transport is not None
        return await transport.connection.channel()

    def _connection_label(self) -> str:
        return self.connection_name or f"lexigram-tasks {self.queue_name}"

    def _redacted(self, exc: BaseException) -> str:
        return redact_text(str(exc), urlsplit(self.amqp_url).password)

    def _describe_failure(self, exc: BaseException) -> str:
        detail = self._redacted(exc) or type(exc).__name__
        hint = ""
        if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError | _AuthErrors):
            hint = " (check the user name and password)"
        return (
            f"cannot connect to RabbitMQ at {redact_url(self.amqp_url)}: "
            f"{type(exc).__name__}: {detail}{hint}"
        )


_AuthErrors = aiormq.exceptions.AuthenticationError

#: What to publish: exchange, routing key, body, properties.
_Publication = tuple[str, str, bytes, spec.Basic.Properties]


def _consumer_tag(message: DeliveredMessage) -> str | None:
    return getattr(message.delivery, "consumer_tag", None)


def _tag(message: DeliveredMessage) -> int:
    delivery = message.delivery
    assert isinstance(delivery, spec.Basic.Deliver | spec.Basic.GetOk)
    assert delivery.delivery_tag is not None, "a delivered message has a delivery tag"
    return delivery.delivery_tag


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("RabbitMQ housekeeping failed: %s", task.exception())
