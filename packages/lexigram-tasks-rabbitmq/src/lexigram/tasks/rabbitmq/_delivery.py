"""The delivery path of :class:`RabbitMQTaskQueue`: dequeue, admission, write-back, settling.

A received message is admitted as a leased delivery or settled on the spot
(a known redelivery, a job not due yet, a classic queue's lost run, which is
counted in a fresh copy); messages no ``dequeue`` handed out go back as fresh
copies. Consuming itself is :mod:`.consumer`; leases are :mod:`.leases`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence

from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from lexigram.tasks.errors import JobSerializationError
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Delivery
from lexigram.tasks.rabbitmq import messages, topology
from lexigram.tasks.rabbitmq._plumbing import Plumbing
from lexigram.tasks.rabbitmq.consumer import Consumer
from lexigram.tasks.rabbitmq.errors import CONNECTION_ERRORS
from lexigram.tasks.rabbitmq.leases import LeaseBook, delivery_tag
from lexigram.tasks.rabbitmq.paired import Paired, settled_as
from lexigram.tasks.rabbitmq.publisher import Publisher
from lexigram.tasks.rabbitmq.topology import Destination, QueueType

logger = logging.getLogger("lexigram.tasks.rabbitmq")


class Delivering(Paired, Plumbing):
    """Dequeue, ack, nack and lease extension (the base of :class:`RabbitMQTaskQueue`)."""

    queue_type: QueueType
    _consumer: Consumer
    _leases: LeaseBook
    _publisher: Publisher

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
        if self._state is not None and out:
            out = await self._screen(out, lease_seconds)
        if any(d.job is not None and d.job.lost_leases > 0 for d in out):
            await self._hold_nothing_more()
        return out

    async def _screen(self, out: list[Delivery], lease_seconds: float) -> list[Delivery]:
        """Record the batch as running in the state store; ack the cancelled jobs unrun.

        If the store cannot be reached the jobs are not run unrecorded: they
        go back to their queue as fresh copies (no attempt used) and the
        error is raised, so the worker backs off and asks again.
        """
        try:
            dropped = await self._record_leased(out, lease_seconds)
        except Exception:
            await self._give_back_leased(out)
            raise
        if not dropped:
            return out
        kept, cancelled = [], []
        for delivery in out:
            if delivery.job is not None and delivery.job.id in dropped:
                lease = self._leases.owned(delivery.token)
                if lease is not None:
                    cancelled.append(lease)
                logger.info("job %s was cancelled before it started: dropped", delivery.job.id)
            else:
                kept.append(delivery)
        await self._leases.finish(cancelled)
        return kept

    async def _give_back_leased(self, out: list[Delivery]) -> None:
        for delivery in out:
            lease = self._leases.owned(delivery.token)
            if lease is None:
                continue
            properties = messages.without_delivery_count(lease.properties)
            try:
                await self._publisher.publish(lease.body, properties, Destination("", lease.queue))
            except Exception:
                continue  # its lease lapses and returns it
            await self._leases.finish([lease])

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

    # -- settling --------------------------------------------------------------

    async def ack(self, delivery: Delivery) -> None:
        lease = self._leases.owned(delivery.token)
        if lease is not None:
            await self._leases.finish([lease])
            if self._state is not None:
                await self._record_settled([settled_as(delivery, ack=True, requeue=False, delay=0)])

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        owned = [(d, self._leases.owned(d.token)) for d in deliveries]
        leases = [lease for _, lease in owned if lease is not None]
        if leases:
            await self._leases.finish(leases)
            if self._state is not None:
                await self._record_settled(
                    [
                        settled_as(d, ack=True, requeue=False, delay=0)
                        for d, lease in owned
                        if lease is not None
                    ]
                )

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
        if self._state is not None:
            settled = settled_as(delivery, ack=False, requeue=requeue, delay=delay)
            await self._record_settled([settled])

    async def extend_lease(self, deliveries: Sequence[Delivery], lease_seconds: float) -> None:
        extended = []
        for delivery in deliveries:
            lease = self._leases.owned(delivery.token)
            if lease is not None:
                self._leases.arm(lease, lease_seconds)
                if delivery.job is not None:
                    extended.append(delivery.job.id)
        if self._state is not None and extended:
            try:
                await self._state.extend_leases(extended, time.time() + lease_seconds)
            except Exception as exc:  # the broker holds the lease; only the display lags
                logger.warning("extending leases in the state store failed: %s", exc)
