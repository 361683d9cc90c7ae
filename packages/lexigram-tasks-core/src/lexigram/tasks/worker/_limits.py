"""Concurrency limits for :class:`WorkerPool`: slots taken before a job runs, given back after.

A job's limits (its task's ``max_concurrency`` and ``max_concurrency_per_key``)
are taken together from the pool's :class:`~lexigram.tasks.concurrency.ConcurrencyLimiter`
under a holder id naming this worker and the job. A job over a limit goes
back to the queue, after a short jittered delay, without using an attempt,
so the jobs of other keys and tasks behind it go on. The heartbeat extends
the slots held with the jobs' leases.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from opentelemetry.trace import Span

from lexigram.tasks.concurrency import (
    SLOTS_HEADER,
    ConcurrencyLimiter,
    Limit,
    LocalConcurrencyLimiter,
    limiter_for,
    local_limit_refused,
    slots_hint,
)
from lexigram.tasks.control import JobState
from lexigram.tasks.job import Job
from lexigram.tasks.memory import MemoryTaskQueue
from lexigram.tasks.protocol import Delivery
from lexigram.tasks.task import Task
from lexigram.tasks.worker._fetching import Fetching

logger = logging.getLogger("lexigram.tasks.worker")

#: Seconds a job over its concurrency limit waits before it is offered again, at least and
#: at most: longer the more jobs under the same limit this worker turned away lately, so a
#: key with a big backlog steps aside for the few jobs of other keys behind it.
LIMITED_DELAY = (0.05, 30.0)
#: Seconds over which the count of a limit's turned-away jobs decays by a factor e.
_BOUNCE_WINDOW = 1.0


class LimitKeyError(Exception):
    """A task's key function raised or returned something other than a str or int."""


class Limiting(Fetching):
    """Takes and gives back concurrency slots (a base of :class:`WorkerPool`)."""

    tasks: Mapping[str, Task[Any, Any]]
    concurrency_limiter: ConcurrencyLimiter | None
    # id(delivery) -> (names, holder, leased): leased slots were taken by the job's lease.
    _limit_holds: dict[int, tuple[list[str], str, bool]]
    # Slots this process took by asking, per name: a job whose limit these fill is refused
    # without a request. Slots a lease took are not counted: the lease decided in the
    # limiter's own store, which every ask consults anyway.
    _limit_counts: dict[str, int]
    _bounces: dict[str, tuple[float, float]]  # name -> (last, decaying count turned away)
    _refused: dict[int, Delivery]  # refused when fetched: put back by the slot that takes it
    _limited_tasks: frozenset[str]
    _release_nowait: Callable[[list[str], str], None] | None
    #: The queue's ack of a succeeded job gives back the slots its lease took.
    _ack_releases_slots: bool
    _done_none: asyncio.Future[None]
    _positional_keys: frozenset[str]  # tasks whose key function takes the task's own parameters
    # Of those, the tasks with a per-key limit alone: name prefix, limit, key function, and
    # the tab and limit that end its SLOTS_HEADER.
    _keyed_only: dict[str, tuple[str, int, Callable[..., Any], str]]

    def _prepare_limits(self, tasks: list[Task[Any, Any]]) -> None:
        """Pick the limiter at start; refuse per-process counting on a shared backend."""
        self._limit_holds = {}
        self._limit_counts = {}
        self._bounces = {}
        self._refused = {}
        limited = sorted(t.name for t in tasks if t.limits.concurrent)
        self._limited_tasks = frozenset(limited)
        self._release_nowait = None
        self._ack_releases_slots = False
        self._positional_keys = frozenset(t.name for t in tasks if t.key_takes_task_parameters)
        # Returned for slots given back without waiting: a done future costs no
        # coroutine, and the slot need not await it.
        loop = asyncio.get_running_loop()
        self._done_none = loop.create_future()
        self._done_none.set_result(None)
        self._keyed_only = {
            t.name: (
                f"task:{t.name}:key:",
                t.limits.max_concurrency_per_key,
                t.limits.concurrency_key,
                f"\t{t.limits.max_concurrency_per_key}",
            )
            for t in tasks
            if t.name in self._positional_keys
            and t.limits.max_concurrency is None
            and t.limits.concurrency_key is not None
            and t.limits.max_concurrency_per_key is not None
        }
        if not limited:
            return
        if self.concurrency_limiter is None:
            self.concurrency_limiter = limiter_for(self.queue)
        limiter = self.concurrency_limiter
        local = limiter is None or isinstance(limiter, LocalConcurrencyLimiter)
        if local and not isinstance(self.queue, MemoryTaskQueue):
            raise local_limit_refused(self.queue.queue_name, self.queue.system, limited)
        self._release_nowait = getattr(limiter, "release_nowait", None)
        # A limiter whose slots live beside the queue's jobs may have the lease take them.
        take_with_leases = getattr(limiter, "take_with_leases", None)
        if take_with_leases is not None:
            take_with_leases(self.queue, f"{self.worker_id}/")
            self._ack_releases_slots = getattr(self.queue, "ack_releases_slots", False)

    def _limits_of(self, task: Task[Any, Any], job: Job) -> list[Limit]:
        return task_limits(task, job.args, job.kwargs, task.name in self._positional_keys)

    async def _take_batch_limits(self, deliveries: list[Delivery]) -> None:
        """Take the slots of a fetched batch's limited jobs in one request (from the fetch loop).

        The slot that takes a job then finds its slots taken, or the job refused,
        and waits for nothing; a job this could not decide is asked for by its slot.
        """
        limited = self._limited_tasks
        limiter = self.concurrency_limiter
        if not limited or limiter is None:
            return
        counts = self._limit_counts
        refused = self._refused
        holds = self._limit_holds
        tasks = self.tasks
        keyed_only = self._keyed_only
        prefix = f"{self.worker_id}/"
        asks: list[Delivery] = []
        requests: list[tuple[list[Limit], str]] = []
        for delivery in deliveries:
            job = delivery.job
            # The lease took (or was refused) the slots the job's SLOTS_HEADER names: kept
            # when they are the ones computed here, else given back and asked for anew.
            # A job back from a dead worker may run alone or be dead-lettered: its slot asks.
            if job is None or job.task not in limited or (job.attempt > 1 and job.lost_leases):
                self._drop_leased_slots(delivery)
                continue
            keyed = keyed_only.get(job.task)
            if keyed is not None and not job.kwargs:
                # _limits_of inlined for the usual task: a per-key limit alone.
                try:
                    key = keyed[2](*job.args)
                except Exception:
                    self._drop_leased_slots(delivery)
                    continue  # its slot fails it
                kind = type(key)
                if kind is int:
                    key = str(key)
                elif kind is not str:
                    self._drop_leased_slots(delivery)
                    continue  # bool, float ...: its slot fails it
                name = keyed[0] + key
                leased = delivery.slots
                if leased is not None:
                    # _leased_decided inlined: the lease took (or was refused) these slots.
                    if job.headers.get(SLOTS_HEADER) == name + keyed[3]:
                        if leased:
                            holds[id(delivery)] = ([name], prefix + job.id, True)
                        else:
                            refused[id(delivery)] = delivery
                        continue
                    self._drop_leased_slots(delivery)
                if name in counts and counts[name] >= keyed[1]:
                    refused[id(delivery)] = delivery
                    continue
                asks.append(delivery)
                requests.append(([(name, keyed[1])], prefix + job.id))
                continue
            try:
                limits = self._limits_of(tasks[job.task], job)
            except LimitKeyError:
                self._drop_leased_slots(delivery)
                continue  # its slot fails it
            if delivery.slots is not None and self._leased_decided(
                delivery, job, [name for name, _ in limits], slots_hint(limits)
            ):
                continue
            for name, limit in limits:
                if name in counts and counts[name] >= limit:
                    refused[id(delivery)] = delivery
                    break
            else:
                asks.append(delivery)
                requests.append((limits, prefix + job.id))
        if not asks:
            return
        try:
            taken = await limiter.acquire_many(requests, self.settings.lease_seconds)
        except Exception as exc:
            logger.warning("taking concurrency slots failed (%s: %s)", type(exc).__name__, exc)
            return
        for delivery, (limits, holder), fits in zip(asks, requests, taken, strict=True):
            if not fits:
                refused[id(delivery)] = delivery
            elif len(limits) == 1:
                name = limits[0][0]
                counts[name] = counts.get(name, 0) + 1
                holds[id(delivery)] = ([name], holder, False)
            else:
                names = [name for name, _ in limits]
                for name in names:
                    counts[name] = counts.get(name, 0) + 1
                holds[id(delivery)] = (names, holder, False)

    def _leased_decided(
        self, delivery: Delivery, job: Job, names: list[str], hint: str | None
    ) -> bool:
        """Whether the lease decided the job's slots: they are the ones computed here
        (``hint``, as SLOTS_HEADER), and it took them (now held) or found one full (the
        job refused). Otherwise what it took is given back and the worker asks (False)."""
        if job.headers.get(SLOTS_HEADER) != hint:
            self._drop_leased_slots(delivery)
            return False
        if delivery.slots:
            self._limit_holds[id(delivery)] = (names, f"{self.worker_id}/{job.id}", True)
        else:
            self._refused[id(delivery)] = delivery
        return True

    def _drop_leased_slots(self, delivery: Delivery) -> None:
        """Give back the slots a delivery's lease took (if it took any) that the worker
        does not keep."""
        job = delivery.job
        if not delivery.slots or job is None:
            return
        hint = job.headers.get(SLOTS_HEADER, "")
        if not hint or self._release_nowait is None:
            return  # they lapse with their lease
        names = hint.split("\t")[::2]
        try:
            self._release_nowait(names, f"{self.worker_id}/{job.id}")
        except Exception as exc:
            logger.warning("releasing concurrency slots %s failed: %s", names, exc)

    async def _ask_limits(self, task: Task[Any, Any], delivery: Delivery) -> bool:
        """Take the slots of a job not taken when it was fetched (True), or settle the job:
        over a limit or a broken key."""
        job = delivery.job
        assert job is not None
        assert self.concurrency_limiter is not None
        try:
            limits = self._limits_of(task, job)
        except LimitKeyError as exc:
            await self._limit_key_failed(delivery, exc)
            return False
        counts = self._limit_counts
        # Refused when fetched, or slots this process holds already fill a limit.
        if self._refused.pop(id(delivery), None) is None and all(
            counts.get(name, 0) < limit for name, limit in limits
        ):
            holder = f"{self.worker_id}/{job.id}"
            lease = self.settings.lease_seconds
            try:
                taken = await self.concurrency_limiter.acquire(limits, holder, lease)
            except Exception as exc:
                logger.warning("taking concurrency slots failed (%s: %s)", type(exc).__name__, exc)
                taken = False
            if taken:
                names = [name for name, _ in limits]
                for name in names:
                    counts[name] = counts.get(name, 0) + 1
                self._limit_holds[id(delivery)] = (names, holder, False)
                return True
        delay = self._limited_delay([name for name, _ in limits])
        logger.debug(
            "job %s (%s) is over a concurrency limit; put back for %.2fs", job.id, job.task, delay
        )
        if not self._can_delay:
            await asyncio.sleep(delay)  # no delayed requeue: do not bounce it straight back
            delay = 0.0
        await self._return_to_queue(delivery, delay=delay, reason="over its concurrency limit")
        return False

    def _limited_delay(self, names: list[str]) -> float:
        """A jittered delay growing with the jobs under these limits turned away lately."""
        now = time.monotonic()
        recent = 0.0
        for name in names:
            then, level = self._bounces.get(name, (now, 0.0))
            # Turned-away jobs per _BOUNCE_WINDOW, decaying: no cliff where a count restarts.
            level = level * math.exp((then - now) / _BOUNCE_WINDOW) + 1.0
            self._bounces[name] = (now, level)
            recent = max(recent, level)
        low, high = LIMITED_DELAY
        return random.uniform(0.5, 1.0) * min(high, 2 * low + 0.01 * recent)

    async def _return_to_queue(
        self, delivery: Delivery, *, delay: float = 0.0, reason: str = "worker shutdown"
    ) -> None:
        # A job given back unrun (at shutdown, say) may hold slots taken when it was fetched.
        self._refused.pop(id(delivery), None)
        await self._give_back_limits(delivery)
        await super()._return_to_queue(delivery, delay=delay, reason=reason)

    async def _settle_cancelled(
        self, job: Job, delivery: Delivery, span: Span | None, duration: float
    ) -> None:
        # A job cancelled while in line never reaches a slot: its slots are given back here.
        self._refused.pop(id(delivery), None)
        await self._give_back_limits(delivery)
        await super()._settle_cancelled(job, delivery, span, duration)

    def _give_back_limits(self, delivery: Delivery) -> Awaitable[None]:
        """Give back the job's slots; awaiting is needed only by a limiter that cannot
        queue a release without waiting (one with no ``release_nowait``)."""
        hold = self._limit_holds.pop(id(delivery), None)
        if hold is None:
            return self._done_none
        names, holder, leased = hold
        if leased:
            if self._ack_releases_slots and delivery.outcome is JobState.SUCCEEDED:
                return self._done_none  # its ack gives back what its lease took
        else:
            counts = self._limit_counts
            for name in names:
                left = counts[name] - 1
                if left:
                    counts[name] = left
                else:
                    del counts[name]
        if self._release_nowait is not None:
            try:
                self._release_nowait(names, holder)
            except Exception as exc:  # the lease lapses instead
                logger.warning("releasing concurrency slots %s failed: %s", names, exc)
            return self._done_none
        return self._release(names, holder)

    async def _release(self, names: list[str], holder: str) -> None:
        assert self.concurrency_limiter is not None
        try:
            await self.concurrency_limiter.release(names, holder)
        except Exception as exc:  # the lease lapses instead
            logger.warning("releasing concurrency slots %s failed: %s", names, exc)

    async def _extend_limits(self) -> None:
        """Extend the slots of every job still running (from the heartbeat)."""
        if not self._limit_holds or self.concurrency_limiter is None:
            return
        held = [(name, holder) for names, holder, _ in self._limit_holds.values() for name in names]
        try:
            await self.concurrency_limiter.extend(held, self.settings.lease_seconds)
        except Exception as exc:
            logger.warning("extending %d concurrency slot(s) failed: %s", len(held), exc)

    async def _limit_key_failed(self, delivery: Delivery, exc: LimitKeyError) -> None:
        job = delivery.job
        assert job is not None
        tb = "".join(traceback.format_exception(exc.__cause__ or exc))
        logger.error("job %s (%s) failed: %s", job.id, job.task, exc)
        await self._dead_letter(delivery, "LimitKeyError", str(exc), tb, None, JobState.FAILED)


def slots_header(
    task: Task[Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> str | None:
    """The :data:`~lexigram.tasks.concurrency.SLOTS_HEADER` of a job of ``task`` being
    enqueued, or None: a key function that fails here fails the job when a worker takes it."""
    try:
        return slots_hint(task_limits(task, args, kwargs, task.key_takes_task_parameters))
    except LimitKeyError:
        return None


def task_limits(
    task: Task[Any, Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    positional: bool = False,
) -> list[Limit]:
    """The concurrency limits a run of ``task`` with these arguments takes a slot of;
    :class:`LimitKeyError` if its key function fails (``positional``: see :func:`job_key`)."""
    limits = task.limits
    found: list[Limit] = []
    if limits.max_concurrency is not None:
        found.append((f"task:{task.name}", limits.max_concurrency))
    if limits.concurrency_key is not None and limits.max_concurrency_per_key is not None:
        fn = limits.concurrency_key
        key = arguments_key(task, args, kwargs, fn, "concurrency_key", positional)
        found.append((f"task:{task.name}:key:{key}", limits.max_concurrency_per_key))
    return found


def job_key(
    task: Task[Any, Any], job: Job, fn: Callable[..., Any], option: str, positional: bool = False
) -> str:
    """``fn`` of the job's arguments (by name) as a str; :class:`LimitKeyError` if it fails.

    ``positional``: ``fn`` has the task's own parameters (``Task.key_takes_task_parameters``), so
    positional arguments alone bind to it as by name, without building keywords.
    """
    return arguments_key(task, job.args, job.kwargs, fn, option, positional)


def arguments_key(
    task: Task[Any, Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    fn: Callable[..., Any],
    option: str,
    positional: bool = False,
) -> str:
    """:func:`job_key` of arguments not yet in a job (an enqueue's)."""
    try:
        key = fn(*args) if positional and not kwargs else task.call_by_name(fn, args, kwargs)
    except Exception as exc:
        raise LimitKeyError(
            f"{option} of task {task.name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise LimitKeyError(
            f"{option} of task {task.name!r} returned {key!r} ({type(key).__name__}); "
            "it must return a str or an int"
        )
    return str(key)
