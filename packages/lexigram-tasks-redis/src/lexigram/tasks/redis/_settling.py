"""Settling leased jobs on Redis: acks in batches, nacks (retry or dead letter), lease extensions.

Each is one script call presenting the lease tokens, so a worker whose lease
lapsed (and whose job went to another) changes nothing; see ack.lua and nack.lua.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lexigram.tasks.attempts import encode_attempt
from lexigram.tasks.control import MAX_ATTEMPTS_KEPT, JobState
from lexigram.tasks.protocol import Delivery


class Settling:
    """``ack``, ``ack_many``, ``nack`` and ``extend_lease`` (a base of ``RedisTaskQueue``)."""

    finished_ttl: float
    failure_ttl: float

    async def _run(self, name: str, args: list[Any]) -> Any:
        raise NotImplementedError

    async def ack(self, delivery: Delivery) -> None:
        await self.ack_many([delivery])

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        # Succeeded jobs (the common case) are one lease each; the others
        # carry how they ended (see ack.lua).
        others: list[Any] = []
        leases = []
        for delivery in deliveries:
            outcome = delivery.outcome
            if outcome is None or outcome is JobState.SUCCEEDED:
                leases.append(delivery.token)
            else:
                error, record = delivery.error, delivery.attempt_record
                others += [
                    delivery.token,
                    outcome.value,
                    error.type if error is not None else "",
                    error.message if error is not None else "",
                    "" if record is None else encode_attempt(record),
                ]
        ttl = repr(float(self.finished_ttl))
        # One worker settles a batch (its pool's acks): its id once.
        worker = deliveries[0].worker_id or ""
        head = [ttl, worker, MAX_ATTEMPTS_KEPT, len(others) // 5]
        await self._run("ack", [*head, *others, *leases])

    async def nack(
        self, delivery: Delivery, *, requeue: bool, delay: float = 0.0, reason: str = ""
    ) -> None:
        job = delivery.job
        requeue = requeue and job is not None
        outcome, error = delivery.outcome, delivery.error
        await self._run(
            "nack",
            [
                delivery.token,
                "1" if requeue else "0",
                repr(float(max(delay, 0.0))),
                reason,
                job.to_bytes() if requeue and job is not None else b"",
                job.priority if job is not None else 0,
                job.attempt if job is not None else 0,
                repr(float(self.failure_ttl)),
                "1" if job is not None else "0",
                outcome.value if outcome is not None else "",
                error.type if error is not None else "",
                error.message if error is not None else "",
                delivery.worker_id or "",
                "" if delivery.attempt_record is None else encode_attempt(delivery.attempt_record),
                MAX_ATTEMPTS_KEPT,
            ],
        )

    async def extend_lease(self, deliveries: Sequence[Delivery], lease_seconds: float) -> None:
        if deliveries:
            leases = [delivery.token for delivery in deliveries]
            await self._run("extend", [repr(float(lease_seconds)), *leases])
