"""Settling leased jobs on Redis: acks in batches, nacks (retry or dead letter), lease extensions.

Each is one script call presenting the lease tokens, so a worker whose lease
lapsed (and whose job went to another) changes nothing; see ack.lua and nack.lua.
An ack or nack also carries, in the same write, the concurrency slots' releases
queued by the limiters on this queue's connection (the jobs' slots are given
back as they end, just before their acks): no round trip of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lexigram.tasks.attempts import encode_attempt
from lexigram.tasks.control import MAX_ATTEMPTS_KEPT, JobState
from lexigram.tasks.protocol import Delivery
from lexigram.tasks.redis import _scripts
from lexigram.tasks.redis._connection import reported
from redis.exceptions import NoScriptError

if TYPE_CHECKING:
    from lexigram.tasks.redis.concurrency import RedisConcurrencyLimiter

    #: A limiter and the releases taken from it, with their packed call.
    Taken = tuple[RedisConcurrencyLimiter, tuple[list[tuple[Sequence[str], str]], bytes]]


#: The ack script's slot arguments when leases take no slots.
_NO_SLOTS = ("", "")


class Settling:
    """``ack``, ``ack_many``, ``nack`` and ``extend_lease`` (a base of ``RedisTaskQueue``)."""

    finished_ttl: float
    failure_ttl: float
    redis_url: str
    cluster: bool
    #: Limiters on this queue's client whose releases the acks and nacks carry.
    _release_sources: tuple[RedisConcurrencyLimiter, ...] = ()
    #: The limiter's key prefix and the worker's holder prefix, while leases take slots.
    _slot_args: list[str]

    async def _run(self, name: str, args: list[Any]) -> Any:
        raise NotImplementedError

    def _script(self, name: str) -> _scripts.PreparedScript:
        raise NotImplementedError

    def carry_releases(self, limiter: RedisConcurrencyLimiter) -> None:
        """Send ``limiter``'s queued releases with this queue's acks and nacks (not on a
        cluster, where its semaphores may live on another master)."""
        if not self.cluster and limiter not in self._release_sources:
            self._release_sources = (*self._release_sources, limiter)

    def stop_carrying(self, limiter: RedisConcurrencyLimiter) -> None:
        self._release_sources = tuple(s for s in self._release_sources if s is not limiter)

    def _take_releases(self, script: _scripts.PreparedScript) -> list[Taken]:
        """The releases queued on ``script``'s client, for a call to carry."""
        taken = []
        for source in self._release_sources:
            carried = source.take_releases(script.client)
            if carried is not None:
                taken.append((source, carried))
        return taken

    @staticmethod
    def _put_back(taken: list[Taken]) -> None:
        """Give releases taken for a call back to their limiters (the call failed, or they
        may not have gone through: releasing twice is harmless)."""
        for source, (releases, _) in taken:
            source.put_back(releases)

    async def _settle_run(self, name: str, args: list[Any]) -> Any:
        """``_run(name, args)``, with the releases queued on this queue's client in the
        same write; those go back to their limiter if the call fails."""
        if not self._release_sources:
            return await self._run(name, args)
        script = self._script(name)
        taken = self._take_releases(script)
        if not taken:
            return await self._run(name, args)
        packed = b"".join([script.pack(args), *(call for _, (_, call) in taken)])
        try:
            with reported(self.redis_url):
                replies = await _scripts.on_connection(
                    script.client, packed, replies=1 + len(taken), keep=True, held=script.held
                )
        except BaseException as exc:
            self._put_back(taken)
            if isinstance(exc, NoScriptError):
                # After a SCRIPT FLUSH: the call alone loads its script (acking or
                # nacking twice is harmless), the limiter loads its own.
                return await self._run(name, args)
            raise
        return replies[0]

    async def ack(self, delivery: Delivery) -> None:
        await self.ack_many([delivery])

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            await self._settle_run("ack", self._ack_args(deliveries))

    def _ack_args(self, deliveries: Sequence[Delivery]) -> list[Any]:
        """The ack script's arguments for ``deliveries`` (at least one)."""
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
        head = [ttl, worker, MAX_ATTEMPTS_KEPT, *_scripts.clock_hint(), len(others) // 5]
        return [*head, *(self._slot_args or _NO_SLOTS), *others, *leases]

    async def nack(
        self, delivery: Delivery, *, requeue: bool, delay: float = 0.0, reason: str = ""
    ) -> None:
        job = delivery.job
        requeue = requeue and job is not None
        outcome, error = delivery.outcome, delivery.error
        await self._settle_run(
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
