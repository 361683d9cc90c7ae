"""RabbitMQTaskQueue: the task-queue protocol on AMQP 0-9-1, with aio-pika.

How the protocol maps onto the broker (``docs/backends/rabbitmq.md`` has the
user's view):

- enqueue: a persistent message, published with ``mandatory`` and awaited
  until the broker confirms it;
- dequeue: a consumer with a prefetch window fills a local buffer while
  someone waits in ``dequeue``; ``wait=0`` pulls with ``basic.get``;
- lease: the unacked delivery (see :mod:`.leases`); consuming: :mod:`.consumer`;
  admitting, writing back and settling deliveries: :mod:`._delivery`;
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
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from lexigram.tasks.errors import (
    BackendConnectionError,
    CapabilityNotSupportedError,
    ConfigurationError,
)
from lexigram.tasks.job import DEFAULT_MAX_JOB_BYTES, Job
from lexigram.tasks.protocol import Capability
from lexigram.tasks.rabbitmq import endpoints, messages, topology
from lexigram.tasks.rabbitmq._delivery import Delivering
from lexigram.tasks.rabbitmq._inspection import Inspecting
from lexigram.tasks.rabbitmq._plumbing import failure_causes, vhost_refused
from lexigram.tasks.rabbitmq.consumer import Consumer
from lexigram.tasks.rabbitmq.endpoints import Endpoints
from lexigram.tasks.rabbitmq.errors import CONNECTION_ERRORS
from lexigram.tasks.rabbitmq.leases import LeaseBook
from lexigram.tasks.rabbitmq.logs import OutageLog, install_client_log_filter
from lexigram.tasks.rabbitmq.paired import control_exchange
from lexigram.tasks.rabbitmq.publisher import Publication, Publisher
from lexigram.tasks.rabbitmq.topology import Destination, QueueType
from lexigram.tasks.redact import redact_url
from lexigram.tasks.state_store import JobStateStore, create_state_store


class RabbitMQTaskQueue(Delivering, Inspecting):
    """A task queue on RabbitMQ: durable queues, confirms, manual acks, DLX, TTL delays.

    ``amqp_url`` and ``queue_name`` are all most users set. The keyword names
    are also the ``tasks.backend`` keys of the YAML configuration.

    - ``amqp_url``: one node's URL, or a cluster's nodes, as one URL with
      several hosts (``amqp://user:pw@h1:5672,h2:5672/vhost``) or a list of
      URLs; connecting tries them in order, each reconnect moves on to the
      next (see :mod:`.endpoints`). ``max_reconnect_interval`` lets the wait
      between failed rounds of the nodes double up to it.

    - ``queue_type``: ``"classic"`` or ``"quorum"`` (replicated; optional
      ``delivery_limit``, and ``quorum_replicas``: how many nodes hold each
      quorum queue, ``x-quorum-initial-group-size``; by default the broker's
      ``quorum_cluster_size``, 3).
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
    - ``state_store``: a :class:`~lexigram.tasks.state_store.JobStateStore`, or
      its configuration (``{"type": "redis", "redis_url": ...}`` or
      ``{"type": "postgres", "dsn": ...}``), that records every job's state:
      with it the queue declares INSPECT, CANCEL and WORKERS (see
      :mod:`.paired`); without it, job control is unavailable and costs nothing.
    """

    system = "rabbitmq"

    def __init__(
        self,
        amqp_url: str | Sequence[str],
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
        quorum_replicas: int | None = None,
        priorities: bool = False,
        queue_arguments: Mapping[str, Any] | None = None,
        connect_timeout: float = 10.0,
        reconnect_interval: float = 1.0,
        max_reconnect_interval: float | None = None,
        connection_name: str | None = None,
        max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
        state_store: JobStateStore | Mapping[str, Any] | None = None,
    ) -> None:
        self.endpoints = Endpoints.parse(amqp_url)
        if queue_type not in ("classic", "quorum"):
            raise ValueError(f"queue_type must be 'classic' or 'quorum', got {queue_type!r}")
        if prefetch is not None and prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if message_ttl is not None and message_ttl <= 0:
            raise ValueError(f"message_ttl must be > 0 seconds, got {message_ttl}")
        if delivery_limit is not None and queue_type != "quorum":
            raise ValueError("delivery_limit needs queue_type='quorum' (classic queues lack it)")
        if quorum_replicas is not None and (queue_type != "quorum" or quorum_replicas < 1):
            raise ValueError(
                f"quorum_replicas must be >= 1 and needs queue_type='quorum', got "
                f"{quorum_replicas} with queue_type={queue_type!r}"
            )
        if priorities and queue_type == "quorum":
            raise ValueError(
                "quorum queues have no 0-9 priorities; use queue_type='classic' for priorities"
            )
        if not queue_name:
            raise ValueError("queue_name must not be empty")
        if max_job_bytes < 1:
            raise ValueError(f"max_job_bytes must be >= 1, got {max_job_bytes}")
        self.max_job_bytes = max_job_bytes
        self.amqp_url = amqp_url if isinstance(amqp_url, str) else tuple(amqp_url)
        self.queue_name = queue_name
        self.queue_type: QueueType = queue_type
        self.prefetch = prefetch
        self.exchange = exchange
        self.exchange_type = exchange_type
        self.routes = dict(routes or {})
        self.message_ttl = message_ttl
        self.delivery_limit = delivery_limit
        self.quorum_replicas = quorum_replicas
        self.priorities = priorities
        self.queue_arguments = dict(queue_arguments or {})
        self.connect_timeout = connect_timeout
        self.reconnect_interval = reconnect_interval
        self.max_reconnect_interval = max_reconnect_interval
        self.connection_name = connection_name
        self.consumed_queues: tuple[str, ...] = tuple(dict.fromkeys([queue_name, *queues]))
        caps = {Capability.DELAY}
        if self.priorities:
            caps.add(Capability.PRIORITY)
        self._state = None if state_store is None else create_state_store(state_store)
        if self._state is not None:
            caps |= {
                Capability.INSPECT,
                Capability.CANCEL,
                Capability.WORKERS,
                Capability.ATTEMPTS,
            }
        self.capabilities = frozenset(caps)

        self._connection: AbstractRobustConnection | None = None
        self._publishing: AbstractRobustChannel | None = None
        self._consuming: AbstractRobustChannel | None = None
        self._leases = LeaseBook()
        install_client_log_filter()
        self._outage = OutageLog(
            self._connection_label(), self.endpoints.shown, reconnect_interval, len(self.endpoints)
        )
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
            quorum_replicas=quorum_replicas,
            describe_failure=self._describe_publish_failure,
            reconnect_timeout=connect_timeout,
        )

    @staticmethod
    def validate_url(url: str | Sequence[str]) -> None:
        """Raise :class:`ConfigurationError` unless ``url`` is one or more RabbitMQ URLs.

        That is an ``amqp://`` or ``amqps://`` URL (with one host or several),
        or a list of them; the message redacts the password.
        """
        Endpoints.parse(url)

    @property
    def state_store(self) -> JobStateStore | None:
        """The job state store paired with this queue (``state_store=``), or None."""
        return self._state

    @property
    def node(self) -> str | None:
        """The URL (password redacted) of the node connected to, or tried during an outage.

        ``None`` before :meth:`connect` and after :meth:`disconnect`.
        """
        if not isinstance(self._connection, endpoints.RotatingConnection):
            return None
        return redact_url(str(self._connection.url))

    def __repr__(self) -> str:
        return (
            f"RabbitMQTaskQueue(amqp_url={self.endpoints.shown!r}, "
            f"queue_name={self.queue_name!r}, queue_type={self.queue_type!r})"
        )

    # -- lifecycle -------------------------------------------------------------

    async def connect(self) -> None:
        """Connect (robustly: reconnects and re-declares by itself) and declare the topology."""
        if self._connection is not None:
            return
        if self._state is not None:
            await self._state.connect()
        try:
            connection = await endpoints.connect(
                self.endpoints,
                timeout=self.connect_timeout,
                reconnect_interval=self.reconnect_interval,
                max_reconnect_interval=self.max_reconnect_interval,
                client_properties={"connection_name": self._connection_label()},
            )
        except asyncio.CancelledError:
            await self._disconnect_store()
            raise
        except Exception as exc:
            await self._disconnect_store()
            if any(vhost_refused(cause) for cause in failure_causes(exc)):
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
            await self._disconnect_store()
            raise

    async def _disconnect_store(self) -> None:
        if self._state is not None:
            await self._state.disconnect()

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
        try:
            await connection.close()
        finally:
            await self._disconnect_store()

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
            if self._state is not None:
                await channel.exchange_delete(control_exchange(self.queue_name))
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
        if self._state is None:
            await self._publisher.publish_confirmed(await self._addressed(job, data))
            return job.id
        return (await self._enqueue_recorded([(job, data)]))[0]

    async def _enqueue_many_encoded(self, encoded: Sequence[tuple[Job, bytes]]) -> list[str]:
        if self._state is not None:
            return await self._enqueue_recorded(encoded)
        # Every job was checked and encoded before this; now they are written
        # in order and every confirm is awaited together.
        await self._publisher.publish_batch([await self._addressed(*item) for item in encoded])
        return [job.id for job, _ in encoded]

    async def _enqueue_recorded(self, encoded: Sequence[tuple[Job, bytes]]) -> list[str]:
        """Record the jobs in the state store, then publish them (a job is never running
        unrecorded); a failed publish removes the records again."""
        jobs = [self._as_sent(job) for job, _ in encoded]
        await self._record_enqueued(jobs)
        try:
            await self._publisher.publish_batch([await self._addressed(*item) for item in encoded])
        except BaseException as exc:
            await self._forget_unpublished(jobs, exc)
            raise
        return [job.id for job in jobs]

    def _as_sent(self, job: Job) -> Job:
        routed = self.routes.get(job.task)
        return (
            job if routed is None or routed == job.queue else dataclasses.replace(job, queue=routed)
        )

    async def _addressed(self, job: Job, body: bytes) -> Publication:
        self._require_connection()
        destination = Destination(self.exchange, self.routes.get(job.task, self.queue_name))
        delay = job.run_at - time.time() if job.run_at is not None else 0.0
        ttl = messages.message_ttl_ms(job) if job.headers else None
        properties = messages.job_properties(job, expiration_ms=None if delay > 0 else ttl)
        return await self._publisher.address(body, properties, destination, delay)

    # -- topology ----------------------------------------------------------------

    def _declared_queues(self) -> list[str]:
        """The consumed queues, plus route targets when routing keys are queue names."""
        queues = list(self.consumed_queues)
        if not self.exchange:
            queues += [q for q in self.routes.values() if q not in queues]
        return queues

    async def _declare_topology(self) -> None:
        await topology.declare_work_queues(
            self._consuming_channel(),
            self._declared_queues(),
            queue_type=self.queue_type,
            exchange_name=self.exchange,
            exchange_type=self.exchange_type,
            max_priority=9 if self.priorities else 0,
            message_ttl=self.message_ttl,
            delivery_limit=self.delivery_limit,
            quorum_replicas=self.quorum_replicas,
            extra=self.queue_arguments,
        )
        if self._state is not None:
            await self._consuming_channel().declare_exchange(
                control_exchange(self.queue_name), aio_pika.ExchangeType.FANOUT, durable=True
            )
