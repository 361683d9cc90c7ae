"""RabbitMQDeadLetterFeeder: RabbitMQ's dead-letter queues into a DeadLetterQueue
(extra ``[rabbitmq]``).

``RabbitMQTaskQueue`` gives each work queue ``Q`` a dead-letter exchange
``Q.dlx`` and queue ``Q.dlq``. Messages land there when a worker without a
dead-letter sink gives up on a job (with ``x-lexigram-*`` reason headers) and
when the broker itself dead-letters one (TTL expired, delivery limit,
rejected by another consumer: ``x-death``). The feeder consumes ``Q.dlq``
and turns each message into a :class:`FailureRecord` in any storage, acking
the message only once the record is stored, so nothing is lost between the
two. A RabbitMQ queue cannot be read by id, filtered or edited, which is
why the records live in a storage rather than in RabbitMQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from lexigram.tasks.dlq import _tracing
from lexigram.tasks.dlq.record import FailureRecord
from lexigram.tasks.errors import BackendConnectionError, ConfigurationError, MalformedJobError
from lexigram.tasks.job import Job
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue, endpoints, messages, topology
from lexigram.tasks.rabbitmq.endpoints import Endpoints

if TYPE_CHECKING:
    from lexigram.tasks.dlq.queue import DeadLetterQueue

logger = logging.getLogger("lexigram.tasks.dlq.rabbitmq")

#: error_type of a message the broker dead-lettered, by its x-death reason.
BROKER_REASONS = {
    "expired": "MessageExpired",
    "maxlen": "QueueOverflow",
    "delivery_limit": "DeliveryLimitExceeded",
    "rejected": "Rejected",
}

_ERROR_TYPE = re.compile(r"^[A-Za-z_][\w.]*$")


class RabbitMQDeadLetterFeeder:
    """Moves every message of RabbitMQ's dead-letter queues (``<queue>.dlq``) into ``dlq``.

    ``await feeder.drain()`` moves what is there now; ``start()``/``stop()``
    consume continuously (``provider.add_service(feeder)`` ties them to the
    workers). ``queue_names`` are the work queues (not their ``.dlq``).
    ``amqp_url`` takes what ``RabbitMQTaskQueue`` takes: one node, or a
    cluster's nodes (several hosts in one URL, or a list of URLs), tried in
    turn on connect and on every reconnect.
    """

    def __init__(
        self,
        dlq: DeadLetterQueue,
        amqp_url: str | Sequence[str],
        queue_names: Sequence[str] = ("default",),
        *,
        prefetch: int = 50,
        connect_timeout: float = 10.0,
        retry_interval: float = 1.0,
        reconnect_interval: float = 5.0,
    ) -> None:
        if not queue_names:
            raise ValueError("queue_names must name at least one work queue")
        self.dlq = dlq
        self.endpoints = Endpoints.parse(amqp_url)
        self.amqp_url = amqp_url if isinstance(amqp_url, str) else tuple(amqp_url)
        self.queue_names = tuple(queue_names)
        self.prefetch = prefetch
        self.connect_timeout = connect_timeout
        self.retry_interval = retry_interval
        self.reconnect_interval = reconnect_interval
        self.moved = 0
        self._connection: AbstractConnection | None = None
        self._consuming: list[tuple[AbstractQueue, str]] = []

    @classmethod
    def for_queue(
        cls, dlq: DeadLetterQueue, queue: RabbitMQTaskQueue, **kwargs: Any
    ) -> RabbitMQDeadLetterFeeder:
        """A feeder for every queue a ``RabbitMQTaskQueue`` consumes."""
        return cls(dlq, queue.endpoints.urls, queue.consumed_queues, **kwargs)

    def __repr__(self) -> str:
        return (
            f"RabbitMQDeadLetterFeeder(amqp_url={self.endpoints.shown!r}, "
            f"queue_names={self.queue_names!r})"
        )

    # -- one pass --------------------------------------------------------------

    async def drain(self) -> int:
        """Move every message now in the dead-letter queues; return how many."""
        await self.dlq.connect()
        connection = await self._connect(robust=False)
        moved = 0
        try:
            for name in self.queue_names:
                channel = await connection.channel()
                queue = await self._dead_letter_queue(channel, name)
                while (message := await queue.get(no_ack=False, fail=False)) is not None:
                    try:
                        await self.dlq.add_record(to_record(message, name))
                    except BaseException:
                        await message.nack(requeue=True)
                        raise
                    await message.ack()
                    moved += 1
                await channel.close()
        finally:
            await connection.close()
        self.moved += moved
        return moved

    # -- continuous ------------------------------------------------------------

    async def start(self) -> None:
        """Consume the dead-letter queues until :meth:`stop`."""
        if self._connection is not None:
            return
        await self.dlq.connect()
        connection = await self._connect(robust=True)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=self.prefetch)
            for name in self.queue_names:
                queue = await self._dead_letter_queue(channel, name)
                tag = await queue.consume(self._on_message_for(name))
                self._consuming.append((queue, tag))
        except BaseException:
            self._consuming.clear()
            await connection.close()
            raise
        self._connection = connection

    async def stop(self) -> None:
        """Stop consuming; messages being moved finish or go back to RabbitMQ."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        for queue, tag in self._consuming:
            # If the channel is gone, its unacked messages return to the queue anyway.
            with contextlib.suppress(aiormq.exceptions.AMQPError, ConnectionError):
                await queue.cancel(tag)
        self._consuming.clear()
        await connection.close()

    def _on_message_for(self, work_queue: str) -> Any:
        async def on_message(message: AbstractIncomingMessage) -> None:
            try:
                await self.dlq.add_record(to_record(message, work_queue))
            except Exception:
                logger.exception(
                    "storing a dead letter of %r failed; it stays in RabbitMQ", work_queue
                )
                # Give the storage a moment before the broker hands it back.
                await asyncio.sleep(self.retry_interval)
                await message.nack(requeue=True)
                return
            await message.ack()
            self.moved += 1

        return on_message

    # -- helpers ---------------------------------------------------------------

    async def _connect(self, *, robust: bool) -> AbstractConnection:
        try:
            if robust:
                return await endpoints.connect(
                    self.endpoints,
                    timeout=self.connect_timeout,
                    reconnect_interval=self.reconnect_interval,
                )
            return await endpoints.connect_once(self.endpoints, timeout=self.connect_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise BackendConnectionError(
                f"cannot connect to RabbitMQ at {self.endpoints.shown} to read dead "
                f"letters: {self.endpoints.redact(f'{type(exc).__name__}: {exc}')}"
            ) from None

    async def _dead_letter_queue(self, channel: AbstractChannel, work_queue: str) -> AbstractQueue:
        name = topology.dead_letter_queue(work_queue)
        try:
            return await channel.get_queue(name, ensure=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise ConfigurationError(
                f"RabbitMQ has no dead-letter queue {name!r}: connect a RabbitMQTaskQueue "
                f"for queue {work_queue!r} once (it declares {work_queue!r}, its dead-letter "
                f"exchange and {name!r})"
            ) from None


def to_record(message: AbstractIncomingMessage, work_queue: str) -> FailureRecord:
    """The failure record of one message read from ``<work_queue>.dlq``."""
    properties = message.properties
    headers: dict[str, Any] = dict(message.headers or {})
    body = message.body
    dead = messages.to_dead_letter(body, properties)
    try:
        job: Job | None = Job.from_json(body)
        problem = ""
    except MalformedJobError as exc:
        job, problem = None, str(exc)
    death = _first_death(headers)
    by_lexigram = messages.REASON_HEADER in headers
    if by_lexigram:
        error_type, error_message = _split_reason(dead.reason)
    else:
        broker_reason = _text(death.get("reason")) if death else None
        error_type = BROKER_REASONS.get(broker_reason or "", "Rejected")
        error_message = dead.reason
    if job is None and not by_lexigram:
        error_message = f"{error_message}; not a valid job: {problem}"
    source_queue = (
        _text(headers.get(messages.SOURCE_QUEUE_HEADER))
        or (_text(death.get("queue")) if death else None)
        or work_queue
    )
    attempts = headers.get(messages.ATTEMPT_HEADER)
    if not isinstance(attempts, int):
        attempts = job.attempt if job is not None else _death_count(death)
    carrier = job.headers if job is not None else _trace_headers(headers)
    return FailureRecord(
        id=_record_id(job, dead.job_id, body, dead.failed_at),
        job=job,
        queue=job.queue if job is not None else source_queue,
        reason=dead.reason,
        error_type=error_type,
        error_message=error_message,
        traceback="",
        attempts=attempts,
        worker_id="",
        failed_at=dead.failed_at,
        trace_context=_tracing.failed_run_context(carrier),
        payload=None if job is not None else body,
        source="rabbitmq",
        details={
            "dead_letter_queue": topology.dead_letter_queue(work_queue),
            "source_queue": source_queue,
            "message_id": properties.message_id,
            "x_death": _jsonable(headers.get("x-death")),
        },
    )


def _split_reason(reason: str) -> tuple[str, str]:
    """``"ValueError: bad"`` -> ``("ValueError", "bad")``, as the worker writes reasons."""
    head, sep, tail = reason.partition(": ")
    if sep and _ERROR_TYPE.match(head):
        return head, tail
    if _ERROR_TYPE.match(reason):
        return reason, ""
    return "Rejected", reason


def _record_id(job: Job | None, job_id: str | None, body: bytes, failed_at: float) -> str:
    if job is not None:
        return job.id
    if job_id:
        return job_id
    # Deterministic, so a message redelivered after a crash updates its record.
    digest = hashlib.sha256(body + repr(failed_at).encode()).hexdigest()[:32]
    return f"malformed-{digest}"


def _first_death(headers: dict[str, Any]) -> dict[str, Any] | None:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return deaths[0]
    return None


def _death_count(death: dict[str, Any] | None) -> int:
    count = death.get("count") if death else None
    return count if isinstance(count, int) else 0


def _trace_headers(headers: dict[str, Any]) -> dict[str, str]:
    found = {}
    for key in ("traceparent", "tracestate"):
        value = _text(headers.get(key))
        if value:
            found[key] = value
    return found


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None


def _jsonable(value: Any) -> Any:
    """AMQP header values (bytes, datetimes, nested tables) as JSON values."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
