"""RabbitMQTaskQueue: the task-queue protocol on AMQP 0-9-1, with aio-pika.

How the protocol maps onto the broker (``docs/backends/rabbitmq.md`` has the
user's view):

- enqueue: a persistent message, published with ``mandatory`` and awaited
  until the broker confirms it;
- dequeue: a consumer with a prefetch window fills a local buffer while
  someone waits in ``dequeue``; ``wait=0`` pulls with ``basic.get``;
- lease: the unacked delivery (see :mod:`.leases`); consuming: :mod:`.consumer`;
- nack with requeue: publish the job as it is now (confirmed), then ack the
  delivery, so a crash between the two duplicates the job but never loses it;
- nack without requeue: publish to the queue's dead-letter exchange with the
  reason in the headers (confirmed), then ack;
- delays: the TTL ladder of :mod:`.topology`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp import commands as spec

from lexigram.tasks.errors import (
    BackendConnectionError,
    CapabilityNotSupportedError,
    ConfigurationError,
    JobSerializationError,
)
from lexigram.tasks.job import DEFAULT_MAX_JOB_BYTES, Job
from lexigram.tasks.protocol import BaseTaskQueue, Capability, DeadLetter, Delivery, QueueCounts
from lexigram.tasks.rabbitmq import messages, topology
from lexigram.tasks.rabbitmq.consumer import Consumer
from lexigram.tasks.rabbitmq.errors import CONNECTION_ERRORS
from lexigram.tasks.rabbitmq.leases import LeaseBook, delivery_tag
from lexigram.tasks.rabbitmq.logs import OutageLog, install_client_log_filter
from lexigram.tasks.rabbitmq.publisher import Publication, Publisher
from lexigram.tasks.rabbitmq.topology import Destination, QueueType
from lexigram.tasks.redact import redact_text, redact_url

logger = logging.getLogger("lexigram.tasks.rabbitmq")


class RabbitMQTaskQueue(BaseTaskQueue):
    """A task queue on RabbitMQ: durable queues, confirms, manual acks, DLX, TTL delays.

    ``amqp_url`` and ``queue_name`` are all most users set. The keyword names
    are also the ``tasks.backend`` keys of the YAML configuration.

    - ``queue_type``: ``"classic"`` or ``"quorum"`` (replicated; optional
      ``delivery_limit``).
    - ``priorities``: job priorities 0-9 on a classic queue (``x-max-priority``);
      off by default, since a priority queue delays every delivery a little.
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
    - ``max_job_bytes``: largest encoded job an enqueue accepts (the broker's
      own ``max_message_size``, 128 MiB by default, is a hard limit above it).
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
        priorities: bool = False,
        queue_arguments: Mapping[str, Any] | None = None,
        connect_timeout: float = 10.0,
        reconnect_interval: float = 1.0,
        connection_name: str | None = None,
        max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
    ) -> None:
        self.validate_url(amqp_url)
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
        if max_job_bytes < 1:
            raise ValueError(f"max_job_bytes must be >= 1, got {max_job_bytes}")
        self.max_job_bytes = max_job_bytes
        self.amqp_url = amqp_url
        self.queue_name = queue_name
        self.queue_type: QueueType = queue_type
        self.prefetch = prefetch
        self.exchange = exchange
        self.exchange_type = exchange_type
        self.routes = dict(routes or {})
        self.message_ttl = message_ttl
        self.delivery_limit = delivery_limit
        self.priorities = priorities
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
        self._publishing: AbstractRobustChannel | None = None
        self._consuming: AbstractRobustChannel | None = None
        self._leases = LeaseBook()
        install_client_log_filter()
        self._outage = OutageLog(self._connection_label(), redact_url(amqp_url), reconnect_interval)
        self._consumer = Consumer(
            self._consuming_channel,
            self.consumed_queues,
            self._leases,
            give_back=self._return_unstarted,
            prefetch=prefetch,
            quorum=queue_type == "quorum",
        )
        self._publisher = Publisher(
            self._publishing_channel,
            self._consuming_channel,
            queue_type=queue_type,
            describe_failure=self._describe_publish_failure,
            reconnect_timeout=connect_timeout,
        )

    @staticmethod
    def validate_url(url: str) -> None:
        """Raise :class:`ConfigurationError` unless ``url`` is an ``amqp://`` or ``amqps://`` URL.

        The configuration loader calls it for ``amqp_url``; the message redacts the password.
        """
        scheme, separator, _ = url.partition("://") if isinstance(url, str) else ("", "", "")
        if not separator or scheme.lower() not in ("amqp", "amqps"):
            shown = redact_url(url) if isinstance(url, str) else type(url).__name__
            raise ConfigurationError(
                f"amqp_url {shown!r} is not a RabbitMQ URL: it must start with amqp:// or "
                "amqps:// (amqp://user:password@host:5672/vhost)"
            )

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
            if _vhost_refused(exc):
                raise ConfigurationError(self._describe_vhost_refusal()) from None
            raise BackendConnectionError(self._describe_failure(exc)) from None
        try:
            self._publishing = await connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._consuming = await connection.channel(publisher_confirms=False)
            connection.close_callbacks.add(self._on_connection_lost)
            connection.reconnect_callbacks.add(self._on_reconnected)
            self._connection = connection
            await self._declare_topology()
        except BaseException:
            self._connection = self._publishing = self._consuming = None
            await connection.close()
            raise

    async def disconnect(self) -> None:
        """Close the connection; unsettled deliveries go back to their queues.

        Messages buffered but never handed out go back first, as fresh copies
        (see :meth:`_return_unstarted`); jobs still leased come back with the
        broker's redelivery mark, as the runs they may have been.
        """
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._consumer.active or self._consumer.buffer:
            # Bounded: during an outage the channel waits for a reconnect, and
            # whatever is not returned by then comes back with the close anyway.
            with contextlib.suppress(TimeoutError, *CONNECTION_ERRORS):
                async with asyncio.timeout(self.connect_timeout):
                    for queue, message in await self._consumer.stop_now(closing=True):
                        await self._return_unstarted(queue, message)
        self._consumer.clear()
        self._leases.clear()
        self._publisher.clear()
        self._publishing = self._consuming = None
        await connection.close()

    def _on_connection_lost(self, _sender: object, cause: BaseException | None = None) -> None:
        """The connection dropped (the robust connection reconnects by itself).

        Consumers, buffered deliveries and the channel's delivery tags are void;
        the next ``dequeue`` consumes again. Leases stay until settled: the
        broker has requeued their messages, and a redelivery to this process is
        matched to them (see :meth:`LeaseBook.settle_known_redelivery`).
        """
        self._consumer.connection_lost()
        if self._connection is not None:  # not our own disconnect()
            self._outage.lost(cause, self._redacted(cause) if cause is not None else "")

    def _on_reconnected(self, *_: object) -> None:
        self._outage.restored()

    async def delete_topology(self) -> None:
        """Delete what this instance declared: its queues, their dead letters, delay ladders.

        Every message in them is lost; meant for tests and decommissioning. A
        named ``exchange`` is left alone (other applications may use it).
        """
        queues = self._declared_queues()
        prefixes = {Destination("", q).ladder_prefix for q in queues}
        prefixes |= self._publisher.ladder_prefixes
        await self._consumer.cancel()
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

    def _unsupported(self, capability: Capability, what: str) -> None:
        if capability is Capability.PRIORITY and self.queue_type == "classic":
            raise CapabilityNotSupportedError(
                f"{self!r} has no priorities: create it with priorities=True "
                "(YAML: priorities: true), which declares the queue with x-max-priority 9"
            )
        super()._unsupported(capability, what)

    def encode_job(self, job: Job) -> bytes:
        """:meth:`BaseTaskQueue.encode_job` of the job as sent: a routed task names its queue."""
        routed = self.routes.get(job.task)
        if routed is not None and job.queue != routed:
            job = dataclasses.replace(job, queue=routed)
        return super().encode_job(job)

    async def _enqueue_encoded(self, job: Job, data: bytes) -> str:
        await self._publisher.publish_confirmed(await self._addressed(job, data))
        return job.id

    async def _enqueue_many_encoded(self, encoded: Sequence[tuple[Job, bytes]]) -> list[str]:
        # Every job was checked and encoded before this; now they are written
        # in order and every confirm is awaited together.
        await self._publisher.publish_batch([await self._addressed(*item) for item in encoded])
        return [job.id for job, _ in encoded]

    async def _addressed(self, job: Job, body: bytes) -> Publication:
        self._require_connection()
        destination = Destination(self.exchange, self.routes.get(job.task, self.queue_name))
        delay = job.run_at - time.time() if job.run_at is not None else 0.0
        ttl = messages.message_ttl_ms(job) if job.headers else None
        properties = messages.job_properties(job, expiration_ms=None if delay > 0 else ttl)
        return await self._publisher.address(body, properties, destination, delay)

    # -- dequeue ---------------------------------------------------------------

    async def dequeue(
        self, *, max_jobs: int = 1, lease_seconds: float = 30.0, wait: float = 0.0
    ) -> list[Delivery]:
        self._require_connection()
        if max_jobs < 1:
            return []
        self._consumer.begin()
        out: list[Delivery] = []
        try:
            if wait > 0:
                await self._consumer.ensure(max_jobs)
            await self._take(out, max_jobs, lease_seconds, wait)
        except CONNECTION_ERRORS as exc:
            # The robust connection is reconnecting: hand out what we have, and
            # give it up to ``wait`` seconds (at least one) instead of failing.
            # Logged at DEBUG: the outage itself is logged once (see logs.py).
            logger.debug(
                "RabbitMQ connection lost while fetching from %r (%s); reconnecting",
                self.queue_name,
                self._redacted(exc) or type(exc).__name__,
            )
            if not out:
                await self._wait_for_reconnect(max(wait, 1.0))
        finally:
            self._consumer.end()
        if any(d.job is not None and d.job.lost_leases > 0 for d in out):
            await self._hold_nothing_more()
        return out

    async def _hold_nothing_more(self) -> None:
        """Stop consuming, and return what the buffer holds, while a suspect job runs.

        A job whose last run was lost with its worker may kill this process too
        (the worker runs it alone). Messages the broker pushed into the prefetch
        window meanwhile would die with the process unstarted, and come back
        counted as lost runs of innocent jobs.
        """
        for queue, message in await self._consumer.stop_now():
            await self._return_unstarted(queue, message)

    async def _return_unstarted(self, queue: str, message: DeliveredMessage) -> None:
        """Put a buffered message that no ``dequeue`` handed out back in its queue.

        ``basic.nack`` or a closing channel would return it marked as
        redelivered (a quorum queue counts one more ``x-delivery-count``),
        which every process reads as a run lost with its worker: a job handed
        back without using an attempt, or one that merely sat in the buffer,
        would use one up. So it goes back as a fresh copy (confirmed, then the
        original acked) that carries in its body the deliveries it really had
        before it reached this buffer. The copy joins the back of the queue.
        """
        if message.channel.is_closed:
            return  # the broker has put it back already, as a redelivery
        redelivered = getattr(message.delivery, "redelivered", False)
        if redelivered and await self._leases.settle_known_redelivery(message):
            return
        earlier = self._earlier_deliveries(message)
        job = self.parse_delivery(message.body, None).job if earlier else None
        await self._write_back(queue, message, job, counted=earlier)

    async def _take(
        self, out: list[Delivery], max_jobs: int, lease_seconds: float, wait: float
    ) -> None:
        """Lease up to ``max_jobs`` messages into ``out``, waiting up to ``wait`` for the first."""
        consumer = self._consumer
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while len(out) < max_jobs:
            item = consumer.pop()
            if item is None and wait <= 0:
                item = await consumer.get_one()
            if item is None:
                remaining = deadline - loop.time()
                if out or remaining <= 0 or self._connection is None:
                    break
                if not consumer.active:  # a reconnect dropped the consumers
                    await consumer.ensure(max_jobs)
                    continue
                await consumer.wait(remaining)  # no await since pop(): nothing missed
                continue
            delivery = await self._admit(*item, lease_seconds=lease_seconds)
            if delivery is not None:
                out.append(delivery)

    async def _admit(
        self, queue: str, message: DeliveredMessage, *, lease_seconds: float
    ) -> Delivery | None:
        """Turn a received message into a leased delivery, or settle it on the spot."""
        info = message.delivery
        assert isinstance(info, spec.Basic.Deliver | spec.Basic.GetOk)
        body, properties = message.body, message.header.properties
        if info.redelivered and await self._leases.settle_known_redelivery(message):
            return None
        delivery = self.parse_delivery(body, None)  # leased below, unless settled here
        job = delivery.job
        if job is None:
            delivery.token = self._leases.lease(queue, message, lease_seconds)
            return delivery
        if job.run_at is not None and job.run_at > time.time():
            # Not due yet: it came early (a longer delay than one ladder trip,
            # or a foreign producer's run_at). Send it round again.
            delay = job.run_at - time.time()
            await self._publisher.publish(body, properties, Destination("", queue), delay)
            await self._leases.ack_tags(message.channel, [delivery_tag(message)])
            return None
        earlier = self._earlier_deliveries(message)
        if self.queue_type == "classic" and earlier:
            # A classic queue only flags a redelivery, however many there were: a
            # job that kills every worker would never use up its attempts. So the
            # lost run is counted in the body, in a copy that runs later.
            await self._write_back(queue, message, job, counted=earlier)
            return None
        messages.adopt_trace_headers(job, properties)
        job.attempt += 1 + earlier
        delivery.token = self._leases.lease(queue, message, lease_seconds)
        return delivery

    def _earlier_deliveries(self, message: DeliveredMessage) -> int:
        """Deliveries of ``message`` before this one that may have run (0 or 1 on classic)."""
        redelivered = bool(getattr(message.delivery, "redelivered", False))
        quorum = self.queue_type == "quorum"
        earlier = messages.redeliveries(message.header.properties, redelivered, quorum=quorum)
        if redelivered and self._leases.was_returned_unstarted(message.body):
            earlier = max(earlier - 1, 0)  # we returned it unstarted: not an attempt
        return earlier

    async def _write_back(
        self, queue: str, message: DeliveredMessage, job: Job | None, *, counted: int
    ) -> None:
        """Publish ``message`` again as a fresh message, ``counted`` deliveries added to its job.

        Confirmed, then the original is acked: a crash in between duplicates
        the job, never loses it. A malformed message is copied as it is.
        """
        tag = delivery_tag(message)
        body = message.body
        try:
            if job is not None and counted:
                body = dataclasses.replace(job, attempt=job.attempt + counted).to_bytes()
            properties = messages.without_delivery_count(message.header.properties)
            await self._publisher.publish(body, properties, Destination("", queue))
        except Exception as exc:
            # Not confirmed (or, for a job that was read, cannot happen: unwritable):
            # put it back as it is; its next delivery tries again.
            logger.warning(
                "writing back message %s failed: %s", message.header.properties.message_id, exc
            )
            self._leases.untrack(message.channel, tag)
            with contextlib.suppress(*CONNECTION_ERRORS):
                await message.channel.basic_nack(tag, requeue=True)
            return
        await self._leases.ack_tags(message.channel, [tag])

    async def _wait_for_reconnect(self, timeout: float) -> None:
        if self._publishing is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._publishing.ready(), timeout)

    # -- settling --------------------------------------------------------------

    async def ack(self, delivery: Delivery) -> None:
        lease = self._leases.owned(delivery.token)
        if lease is not None:
            await self._leases.finish([lease])

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        owned = [self._leases.owned(delivery.token) for delivery in deliveries]
        leases = [lease for lease in owned if lease is not None]
        if leases:
            await self._leases.finish(leases)

    async def nack(
        self, delivery: Delivery, *, requeue: bool, delay: float = 0.0, reason: str = ""
    ) -> None:
        lease = self._leases.owned(delivery.token)
        if lease is None:
            return  # settled already, or the lease lapsed
        job = delivery.job
        if requeue and job is not None and delay > 0:
            job = dataclasses.replace(job, run_at=time.time() + delay)
        body = delivery.raw
        if job is not None:
            try:
                body = job.to_bytes()
            except JobSerializationError as exc:
                # Left unsettled, the job would run again at every lease: keep
                # the message as it was received, in the dead letters.
                reason = (
                    f"JobSerializationError: the job could not be written back ({exc}); "
                    f"the message as received is kept (was: {reason or 'rejected'})"
                )
                requeue = False
        if requeue and job is not None:
            properties = messages.job_properties(job)
            await self._publisher.publish(body, properties, Destination("", lease.queue), delay)
        else:
            properties = messages.dead_letter_properties(
                lease.properties,
                reason=reason or "rejected",
                source_queue=lease.queue,
                attempt=job.attempt if job is not None else None,
                job_id=job.id if job is not None else None,
            )
            exchange = topology.dead_letter_exchange(lease.queue)
            await self._publisher.publish(body, properties, Destination(exchange, lease.queue))
        await self._leases.finish([lease])

    async def extend_lease(self, deliveries: Sequence[Delivery], lease_seconds: float) -> None:
        for delivery in deliveries:
            lease = self._leases.owned(delivery.token)
            if lease is not None:
                self._leases.arm(lease, lease_seconds)

    # -- inspection --------------------------------------------------------------

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

    # -- topology ----------------------------------------------------------------

    def _declared_queues(self) -> list[str]:
        """The consumed queues, plus route targets when routing keys are queue names."""
        queues = list(self.consumed_queues)
        if not self.exchange:
            queues += [q for q in self.routes.values() if q not in queues]
        return queues

    async def _declare_topology(self) -> None:
        channel = self._consuming_channel()
        targets = self._declared_queues()
        try:
            exchange = None
            if self.exchange:
                exchange = await channel.declare_exchange(
                    self.exchange, self.exchange_type, durable=True
                )
            for queue in targets:
                arguments = topology.work_queue_arguments(
                    self.queue_type,
                    queue=queue,
                    max_priority=9 if self.priorities else 0,
                    message_ttl=self.message_ttl,
                    delivery_limit=self.delivery_limit,
                    extra=self.queue_arguments,
                )
                await topology.declare_work_queue(
                    channel,
                    queue,
                    arguments=arguments,
                    queue_type=self.queue_type,
                    exchange=exchange,
                )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"RabbitMQ refused the declaration of {targets!r}: {exc}. A queue or exchange "
                "of that name exists with other settings (queue_type, message_ttl, "
                "delivery_limit, priorities, queue_arguments): keep its settings or delete it"
            ) from None

    # -- plumbing --------------------------------------------------------------

    def _require_connection(self) -> None:
        if self._connection is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")

    def _publishing_channel(self) -> AbstractRobustChannel:
        if self._publishing is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")
        return self._publishing

    def _consuming_channel(self) -> AbstractRobustChannel:
        if self._consuming is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")
        return self._consuming

    async def _temporary_channel(self) -> AbstractChannel:
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
        if isinstance(
            exc,
            aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.AuthenticationError,
        ):
            hint = " (check the user name and password)"
        return (
            f"cannot connect to RabbitMQ at {redact_url(self.amqp_url)}: "
            f"{type(exc).__name__}: {detail}{hint}"
        )

    def _describe_vhost_refusal(self) -> str:
        parts = urlsplit(self.amqp_url)
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        user = unquote(parts.username) if parts.username else "guest"
        return (
            f"cannot connect to RabbitMQ at {redact_url(self.amqp_url)}: vhost {vhost!r} "
            f"does not exist or access refused for user {user!r} (create it with "
            f"`rabbitmqctl add_vhost {vhost}` and grant access with `rabbitmqctl "
            f"set_permissions -p {vhost} {user} '.*' '.*' '.*'`, or fix the URL's path)"
        )

    def _describe_publish_failure(self, exc: BaseException) -> str:
        return (
            f"publishing to {redact_url(self.amqp_url)} failed: "
            f"{type(exc).__name__}: {self._redacted(exc)}"
        )


def _vhost_refused(exc: BaseException) -> bool:
    """Whether the broker answered ``connection.open`` with ``connection.close``.

    RabbitMQ does that for a vhost that does not exist or that the user may not
    access; aiormq reports it as an unexpected frame, without the broker's text.
    """
    text = str(exc)
    return (
        isinstance(exc, aiormq.exceptions.InvalidFrameError)
        and "Connection.OpenOk" in text
        and "Connection.Close" in text
    )
