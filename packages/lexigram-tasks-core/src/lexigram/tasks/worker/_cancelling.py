"""Cancelling running jobs for :class:`WorkerPool`: the control channel and its fallback.

A backend declaring :attr:`~lexigram.tasks.Capability.CANCEL` publishes each
cancellation on a control channel, which the pool watches for its lifetime;
the heartbeat asks for the cancellations of the jobs it holds as the
fallback. A job heard of here ends ``cancelled``: an ``async def`` task's
slot is cancelled (the task gets ``asyncio.CancelledError``), the child
process of a process-executor job is killed, a plain ``def`` task's
:attr:`CurrentJob.cancel_requested` is set (a thread cannot be
interrupted), a job leased and still in line never starts. A cancellation
of a job this pool does not hold is ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from lexigram.tasks.control import require
from lexigram.tasks.current import job_of
from lexigram.tasks.protocol import Capability, Delivery
from lexigram.tasks.worker._running import Running

logger = logging.getLogger("lexigram.tasks.worker")

#: Longest pause before watching the control channel again after it failed.
_MAX_BACKOFF = 30.0


class Cancelling(Running):
    """Hears cancellations and stops the jobs they name (a base of :class:`WorkerPool`)."""

    _ending: set[asyncio.Task[None]]

    def _on_cancel(self, job_id: str) -> None:
        """Stop ``job_id`` if this pool holds it: running, or leased and in line."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called from a backend's thread: hand it to the pool's loop
            self._loop.call_soon_threadsafe(self._on_cancel, job_id)
            return
        for slot in self._slots:
            delivery = slot.delivery
            if delivery is None or delivery.job is None or delivery.job.id != job_id:
                continue
            if slot.span is None:
                # Not in its task yet (waiting for a rate limit, or to run alone):
                # the heartbeat's fallback asks again once it runs.
                return
            current = job_of(slot, delivery)
            if not current.cancel_requested:
                logger.info("cancellation of job %s (%s) heard", job_id, delivery.job.task)
            current.request_cancel()
            if self._processes is not None and self._processes.stop_job(slot, "cancel"):
                return  # its child is killed: the job ends cancelled once it is gone
            if slot.deadline is not None and not slot.in_thread and not slot.cancelled:
                slot.cancelled = True
                slot.runner.cancel()
            return
        for delivery in self._ready:
            if delivery.job is not None and delivery.job.id == job_id:
                self._ready.remove(delivery)
                self._busy -= 1
                if self._suspect is delivery:
                    self._suspect = None
                self._slot_free.set()
                ending = loop.create_task(self._cancel_in_line(delivery))
                self._ending.add(ending)
                ending.add_done_callback(self._ending.discard)
                return

    async def _cancel_in_line(self, delivery: Delivery) -> None:
        assert delivery.job is not None
        try:
            await self._settle_cancelled(delivery.job, delivery, None, 0.0)
        except Exception:
            logger.exception("cancelling job %s failed", delivery.job.id)

    def _listening(self) -> None:
        """The control channel listens (again): catch up on what was sent before."""
        if self._held:
            task = asyncio.get_running_loop().create_task(self._catch_up())
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

    async def _catch_up(self) -> None:
        try:
            ask = require(self.queue, "cancel_requested", Capability.CANCEL)
            cancelled: set[str] = await ask(list(self._held.values()))
        except Exception as exc:
            logger.warning("asking for cancellations failed (%s); the heartbeat asks again", exc)
            return
        for job_id in cancelled:
            self._on_cancel(job_id)

    async def _watch_cancellations(self, watch: Any) -> None:
        """Run the backend's ``watch_cancellations`` for the pool's life, again after a failure."""
        failures = 0
        listener = _Listener(self._on_cancel, self._listening)
        while True:
            began = time.monotonic()
            try:
                await watch(listener)
                problem = "it returned"
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() - began > _MAX_BACKOFF:
                failures = 0  # it ran a good while: start the backoff over
            failures += 1
            pause = min(0.1 * 2**failures, _MAX_BACKOFF)
            logger.warning(
                "watching for cancellations on %r stopped (%s); watching again in %.1fs "
                "(meanwhile the heartbeat finds them)",
                self.queue,
                problem,
                pause,
            )
            await asyncio.sleep(pause)


class _Listener:
    """The pool's ``on_cancel``, with the hook :func:`~lexigram.tasks.control.listening` calls."""

    __slots__ = ("_on_cancel", "listening")

    def __init__(self, on_cancel: Callable[[str], None], on_listening: Callable[[], None]) -> None:
        self._on_cancel = on_cancel
        self.listening = on_listening

    def __call__(self, job_id: str) -> None:
        self._on_cancel(job_id)
