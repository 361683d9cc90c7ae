"""The settling half of :class:`PostgresTaskQueue`: acks, nacks and lease extensions.

Every statement presents the lease token the job was claimed with, so a
worker whose lease lapsed (and whose job went to another) changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lexigram.tasks.attempts import encode_attempt
from lexigram.tasks.control import MAX_ATTEMPTS_KEPT, JobState
from lexigram.tasks.postgres._pools import Pooled
from lexigram.tasks.protocol import Delivery


class Settling(Pooled):
    """Finishes, requeues and dead-letters leased jobs (a base of :class:`PostgresTaskQueue`)."""

    keep_finished: float

    async def extend_lease(self, deliveries: Sequence[Delivery], lease_seconds: float) -> None:
        if not deliveries:
            return
        ids, tokens = _pairs(deliveries)
        await self._run(
            lambda c: c.execute(self._sql.extend, ids, tokens, lease_seconds), settling=True
        )

    async def ack(self, delivery: Delivery) -> None:
        await self.ack_many([delivery])

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Finish several jobs with one statement (a stale lease is a no-op).

        With ``keep_finished=0`` the rows are deleted, except those of
        cancelled jobs: they are kept as cancelled jobs not yet started are
        (see :meth:`delete_expired`), so a cancellation can be looked up.
        """
        if not deliveries:
            return
        if self.keep_finished > 0:
            await self._ack_keep(deliveries)
            return
        cancelled = [d for d in deliveries if d.outcome is JobState.CANCELLED]
        if cancelled:
            await self._ack_keep(cancelled)
            deliveries = [d for d in deliveries if d.outcome is not JobState.CANCELLED]
            if not deliveries:
                return
        ids, tokens = _pairs(deliveries)
        await self._run(lambda c: c.execute(self._sql.ack_delete, ids, tokens), settling=True)

    async def _ack_keep(self, deliveries: Sequence[Delivery]) -> None:
        """Mark rows finished, with how each job ended (and its attempt records)."""
        ids, tokens = _pairs(deliveries)
        states: list[str | None] = []
        error_types: list[str | None] = []
        error_messages: list[str | None] = []
        records: list[str | None] = []
        for delivery in deliveries:
            states.append(None if delivery.outcome is None else delivery.outcome.value)
            error_types.append(None if delivery.error is None else delivery.error.type)
            error_messages.append(None if delivery.error is None else delivery.error.message)
            record = delivery.attempt_record
            records.append(None if record is None else encode_attempt(record))
        # One worker settles a batch (its pool's acks): its id once.
        args = [ids, tokens, states, error_types, error_messages, deliveries[0].worker_id]
        if any(records):
            statement = self._sql.ack_keep_attempts
            args += [records, MAX_ATTEMPTS_KEPT]
        else:
            statement = self._sql.ack_keep
        await self._run(lambda c: c.execute(statement, *args), settling=True)

    async def nack(
        self, delivery: Delivery, *, requeue: bool, delay: float = 0.0, reason: str = ""
    ) -> None:
        row_id, token = delivery.token
        job = delivery.job
        error = delivery.error
        attempt = delivery.attempt_record
        # How the attempt ended: the last parameters of both statements.
        ended = (
            None if error is None else error.type,
            None if error is None else error.message,
            delivery.worker_id,
            None if attempt is None else encode_attempt(attempt),
            MAX_ATTEMPTS_KEPT,
        )
        if requeue and job is not None:
            statement = self._sql.requeue
            args: tuple[Any, ...] = (
                row_id,
                token,
                job.to_bytes(),
                job.attempt,
                job.priority,
                max(delay, 0.0),
                reason or None,
                self._sql.channel,
                _requeued_state(delivery.outcome),
            )
        else:
            statement = self._sql.dead_letter
            args = (row_id, token, reason, delivery.job_id, _dead_state(delivery))
        await self._run(lambda c: c.execute(statement, *args, *ended), settling=True)


def _requeued_state(outcome: JobState | None) -> str | None:
    """The ``state`` of a requeued row: retrying, or plain queued (handed back)."""
    return JobState.RETRYING.value if outcome is JobState.RETRYING else None


def _dead_state(delivery: Delivery) -> str:
    """The ``state`` of a dead-lettered row: as the worker says, else dead for a bad message."""
    if delivery.outcome in (JobState.FAILED, JobState.DEAD):
        return delivery.outcome.value
    return JobState.FAILED.value if delivery.job is not None else JobState.DEAD.value


def _pairs(deliveries: Sequence[Delivery]) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    tokens: list[int] = []
    for delivery in deliveries:
        row_id, token = delivery.token
        ids.append(row_id)
        tokens.append(token)
    return ids, tokens
