"""The fetch loop of :class:`WorkerPool`: leasing as many jobs as there are free slots.

Leased jobs wait in line for a slot; a job whose last worker died (a
"suspect") is started last and runs alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from lexigram.tasks.protocol import Delivery
from lexigram.tasks.worker._settling import Settling
from lexigram.tasks.worker._support import Slot

logger = logging.getLogger("lexigram.tasks.worker")


class Fetching(Settling):
    """Leases jobs and puts them in line for the slots (a base of :class:`WorkerPool`)."""

    _ready: deque[Delivery]  # leased, waiting for a slot
    _idle: list[Slot]  # slots waiting for a job
    _waking: int  # idle slots woken that have not looked at _ready yet
    _wake_planned: bool
    _busy: int  # jobs leased and not done: in line or running
    _suspect: Delivery | None
    _slot_free: asyncio.Event
    _stopping: bool

    async def _fetch_loop(self) -> None:
        failures = 0
        while not self._stopping:
            free = self.settings.worker_count - self._busy
            processes = self._processes
            if (
                free <= 0
                or self._suspect is not None
                or (processes is not None and processes.waiting >= free)
            ):
                # A suspect runs alone: lease nothing more until it is done. While at
                # least as many jobs wait for a child process as slots are free, jobs
                # leased now would wait too: lease them later, several per round trip.
                self._slot_free.clear()
                self._fetch_parked = True  # see _acks_wait_for_lease
                try:
                    await self._slot_free.wait()
                finally:
                    self._fetch_parked = False
                continue
            try:
                acks = self._acks_for_lease()
                if acks:
                    deliveries = await self._lease_with_acks(acks, free)
                else:
                    deliveries = await self.queue.dequeue(
                        max_jobs=free,
                        lease_seconds=self.settings.lease_seconds,
                        wait=self.settings.poll_interval,
                    )
            except Exception as exc:
                failures += 1
                pause = min(self.settings.poll_interval * 2**failures, 10.0)
                logger.error(
                    "fetching from %r failed (%s: %s); retrying in %.1fs",
                    self.queue,
                    type(exc).__name__,
                    exc,
                    pause,
                )
                await asyncio.sleep(pause)
                continue
            failures = 0
            for delivery in deliveries:
                self._held[id(delivery)] = delivery
            if deliveries:
                # Before a return at shutdown too: it gives back the slots the lease took.
                await self._take_batch_limits(deliveries)
            if self._stopping:
                # Shielded: a cancellation must not leave some of them to lapse.
                await asyncio.shield(self._return_all(deliveries))
                break
            suspect = None
            for delivery in deliveries:
                if self._is_suspect(delivery):
                    if suspect is None:
                        suspect = delivery
                        continue
                    # One suspect at a time; the others wait in the queue, unharmed
                    # if this one kills the worker.
                    await self._return_to_queue(delivery, reason="another suspect runs alone")
                    continue
                self._busy += 1
                self._ready.append(delivery)
            if suspect is not None:
                # Started last, it waits for the jobs leased with it to finish first.
                self._suspect = suspect
                self._busy += 1
                self._ready.append(suspect)
            if self._ready:
                self._start_slots()
            if deliveries:
                # Let the new jobs start before going back for more: fetching
                # again first would delay every job by the cost of a dequeue.
                await asyncio.sleep(0)

    async def _lease_with_acks(self, acks: list[Delivery], free: int) -> list[Delivery]:
        """Lease up to ``free`` jobs, acking ``acks`` in the same write; acks that did
        not go through go back to the ack loop."""
        ride = self._acks_ride
        assert ride is not None
        acked = False
        try:
            deliveries, acked = await ride(
                acks,
                max_jobs=free,
                lease_seconds=self.settings.lease_seconds,
                wait=self.settings.poll_interval,
            )
        finally:
            if acked:
                self._acked(acks)
            else:
                self._to_ack[:0] = acks
                self._ack_wakeup.set()
        return deliveries

    def _start_slots(self) -> None:
        """Get idle slots onto the jobs in line: one now, the others one turn later.

        The slot woken now may run several jobs (one that does not wait for
        anything is done before the next turn); only the jobs still in line
        then wake more slots, so no slot wakes to an empty line.
        """
        if self._waking == 0:
            self._wake(1)
        if not self._wake_planned:
            self._wake_planned = True
            asyncio.get_running_loop().call_soon(self._wake_for_line)

    def _wake_for_line(self) -> None:
        self._wake_planned = False
        self._wake(len(self._ready) - self._waking)

    def _wake(self, count: int) -> None:
        """Wake up to ``count`` idle slots."""
        while count > 0 and self._idle:
            waiter = self._idle.pop().waiter
            if waiter is not None and not waiter.done():
                self._waking += 1
                waiter.set_result(None)
            count -= 1

    def _is_suspect(self, delivery: Delivery) -> bool:
        """Its last run ended with its worker: it may be what killed it."""
        job = delivery.job
        # attempt > 1 first: a cheap test that most jobs fail.
        return (
            job is not None
            and job.attempt > 1
            and 0 < job.lost_leases <= self.settings.lost_lease_retries
        )

    async def _return_line(self) -> None:
        """Give back the jobs leased and not started yet."""
        line = list(self._ready)
        self._ready.clear()
        self._busy -= len(line)
        if self._suspect in line:
            self._suspect = None
        if line:
            await asyncio.shield(self._return_all(line))

    async def _return_all(self, deliveries: list[Delivery]) -> None:
        await asyncio.gather(*(self._return_to_queue(d) for d in deliveries))
