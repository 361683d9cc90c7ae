"""TaskScheduler: turns cron ticks into ordinary jobs on a provider's backends.

Its lifecycle and management calls live here; which templates it knows is
``_templates``, how a tick is claimed and enqueued is ``_firing``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import signal
import time
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Any

from lexigram.tasks.memory import MemoryTaskQueue
from lexigram.tasks.protocol import TaskQueueProtocol
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.scheduler._firing import (
    HEADER_FIRE_TIME,
    HEADER_TEMPLATE,
    FiredTick,
    due_ticks,
    enqueue_tick,
    fire_due,
)
from lexigram.tasks.scheduler._templates import KnownTemplates
from lexigram.tasks.scheduler.errors import (
    InvalidScheduleError,
    ReadOnlyTemplateError,
    TemplateNotFoundError,
)
from lexigram.tasks.scheduler.registry import (
    ScheduleRegistry,
    check_arguments,
    default_registry,
)
from lexigram.tasks.scheduler.store import (
    MemoryTemplateStore,
    TemplateState,
    TemplateStore,
    store_from_url,
)
from lexigram.tasks.scheduler.template import ScheduleOptions, ScheduleTemplate, TemplateInfo
from lexigram.tasks.task import Task

__all__ = ["HEADER_FIRE_TIME", "HEADER_TEMPLATE", "FiredTick", "TaskScheduler", "default_store"]

logger = logging.getLogger("lexigram.tasks.scheduler")

#: How long stop() waits for a tick in progress (a store or broker that hangs).
_STOP_TIMEOUT = 10.0

_schedulers: weakref.WeakKeyDictionary[TaskProvider, TaskScheduler] = weakref.WeakKeyDictionary()


class TaskScheduler:
    """Enqueues one ordinary job per cron tick of every template.

    ``TaskScheduler(provider)`` takes every ``@scheduled`` template (from
    ``registry``, default :data:`default_registry`), registers each function as a
    task of ``provider`` unless it already is one, and attaches itself with
    ``provider.add_service``: it then starts and stops with the provider's
    workers (``attach=False`` only registers the tasks, for worker processes
    that should not schedule). ``await scheduler.serve()`` (or
    ``lexigram-tasks scheduler app:provider``) runs it alone. A provider has
    at most one attached scheduler; :meth:`for_provider` finds it.

    ``store`` keeps runtime templates, pause flags and each template's last
    fire time. Schedulers sharing one Redis or PostgreSQL store enqueue each
    tick exactly once between them. Without ``store``, the primary backend's
    Redis or PostgreSQL server is used when it has one, else a
    :class:`MemoryTemplateStore` (one process only).
    ``clock`` returns the current Unix time (tests inject one);
    ``refresh_interval`` is the longest the scheduler sleeps between reads of
    the store, i.e. how soon it sees templates added or resumed elsewhere.
    """

    #: Whether the provider starts and stops this scheduler with its workers.
    attached: bool

    def __init__(
        self,
        provider: TaskProvider,
        *,
        store: TemplateStore | None = None,
        registry: ScheduleRegistry | None = None,
        clock: Callable[[], float] = time.time,
        refresh_interval: float = 1.0,
        attach: bool = True,
    ) -> None:
        if refresh_interval <= 0:
            raise ValueError("refresh_interval must be > 0 seconds")
        self.provider = provider
        self.store: TemplateStore = store if store is not None else default_store(provider.queue)
        self.registry = registry if registry is not None else default_registry
        self.clock = clock
        self.refresh_interval = refresh_interval
        self._templates = KnownTemplates(provider, self.registry)
        self._connected = False
        self._tick_lock = asyncio.Lock()
        self._next_wakeup: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        existing = _schedulers.get(provider)
        if attach and existing is not None and existing.attached:
            raise ValueError(
                "this provider already has a TaskScheduler attached; "
                "use TaskScheduler.for_provider(provider) to get it"
            )
        self.sync_code_templates()
        self.attached = attach
        if existing is None or attach:
            _schedulers[provider] = self
        if attach:
            provider.add_service(self)

    def __repr__(self) -> str:
        return f"TaskScheduler({self.provider!r}, store={self.store!r})"

    @property
    def next_wakeup(self) -> float | None:
        """The earliest next tick of the active templates, as of the last :meth:`run_due`."""
        return self._next_wakeup

    @classmethod
    def for_provider(cls, provider: TaskProvider, **options: Any) -> TaskScheduler:
        """The scheduler of ``provider``, creating (and attaching) one if it has none."""
        existing = _schedulers.get(provider)
        return existing if existing is not None else cls(provider, **options)

    @staticmethod
    def of(provider: TaskProvider) -> TaskScheduler | None:
        """The scheduler of ``provider`` (the attached one, else the first created), if any."""
        return _schedulers.get(provider)

    # -- code templates ---------------------------------------------------------

    def sync_code_templates(self) -> None:
        """Take up ``@scheduled`` templates defined since the last call (done on
        every tick, so a module imported later is noticed)."""
        self._templates.sync()

    # -- lifecycle ---------------------------------------------------------------

    async def connect(self) -> None:
        """Connect the template store (management calls do this on their own)."""
        if not self._connected:
            await self.store.connect()
            self._connected = True

    async def disconnect(self) -> None:
        if self._connected:
            self._connected = False
            await self.store.disconnect()

    async def start(self) -> None:
        """Start firing ticks in the background (the provider calls this)."""
        if self._task is not None:
            return
        await self.connect()
        self.sync_code_templates()
        if isinstance(self.store, MemoryTemplateStore) and not isinstance(
            self.provider.queue, MemoryTaskQueue
        ):
            logger.warning(
                "scheduler state is kept in this process (MemoryTemplateStore): every scheduler "
                "process fires every tick; give TaskScheduler a RedisTemplateStore or "
                "PostgresTemplateStore to fire each tick once across processes"
            )
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._loop(self._stopping), name="lexigram-scheduler")
        logger.info("scheduler started with %d code template(s)", len(self._templates.code))

    async def stop(self) -> None:
        """Finish the tick in progress (up to ``_STOP_TIMEOUT`` seconds), stop, and
        disconnect the store."""
        task, self._task = self._task, None
        if task is not None and self._stopping is not None:
            self._stopping.set()
            done, _ = await asyncio.wait({task}, timeout=_STOP_TIMEOUT)
            if not done:
                logger.warning("scheduler tick still running after %gs: cancelled", _STOP_TIMEOUT)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.disconnect()

    async def serve(self) -> None:
        """Run the scheduler alone (no workers) until SIGTERM/SIGINT."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: builtins.list[int] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, stop.set)
                installed.append(signum)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread, or a platform without signal handlers
        try:
            await self.provider.connect()
            await self.start()
            await stop.wait()
        finally:
            for handled in installed:
                loop.remove_signal_handler(handled)
            await self.stop()
            await self.provider.disconnect()

    def run(self) -> None:
        """Blocking: ``scheduler.run()`` until SIGTERM/SIGINT."""
        asyncio.run(self.serve())

    async def _loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.run_due()
                delay = self.refresh_interval
                if self._next_wakeup is not None:
                    # Wake just after the tick, so "now" is past the fire time.
                    delay = min(delay, max(0.0, self._next_wakeup - self.clock()) + 0.001)
            except Exception:
                logger.exception("scheduler tick failed; retrying")
                delay = min(self.refresh_interval, 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=delay)

    # -- ticks -------------------------------------------------------------------

    async def run_due(self, now: float | None = None) -> builtins.list[FiredTick]:
        """Fire every tick due at ``now`` (default: the clock), once across all
        schedulers sharing the store; return the jobs this call enqueued."""
        async with self._tick_lock:
            await self.connect()
            self._templates.sync()
            moment = self.clock() if now is None else now
            snapshot = await self.store.load()
            templates = self._templates.fireable(snapshot)
            due, self._next_wakeup = await due_ticks(templates, snapshot, self.store, moment)
            if not due:
                return []
            return await fire_due(self.provider, self.store, self._templates.queue_for, due, moment)

    # -- management ---------------------------------------------------------------

    async def list(self) -> builtins.list[TemplateInfo]:
        """Every template (code-defined and runtime), with pause state, last and next run."""
        await self.connect()
        self._templates.sync()
        snapshot = await self.store.load()
        now = self.clock()
        return [
            self._info(t, snapshot.states.get(t.name), now)
            for t in self._templates.listed(snapshot)
        ]

    async def get(self, name: str) -> TemplateInfo:
        """One template's listing; :class:`TemplateNotFoundError` if there is none."""
        for info in await self.list():
            if info.name == name:
                return info
        raise TemplateNotFoundError(self._templates.not_found(name))

    @staticmethod
    def _info(template: ScheduleTemplate, state: TemplateState | None, now: float) -> TemplateInfo:
        paused = state.paused if state is not None else False
        cursor = state.last_fire if state is not None else now
        next_time = template.schedule.next_after(max(now, cursor))
        last = (
            template.schedule.local(cursor)
            if state is not None and _is_fire_time(template, cursor)
            else None
        )
        return TemplateInfo(
            template=template,
            paused=paused,
            last_fire=last,
            next_run=None if paused else template.schedule.local(next_time),
        )

    async def next_runs(self, name: str, count: int = 5) -> builtins.list[datetime]:
        """The next ``count`` fire times of ``name``, in its timezone."""
        info = await self.get(name)
        return info.template.next_runs(self.clock(), count)

    async def add(
        self,
        name: str,
        task: str | Task[Any, Any],
        cron: str,
        *,
        options: ScheduleOptions | None = None,
        **keywords: Any,
    ) -> ScheduleTemplate:
        """Add a runtime template, shared through the store with every scheduler.

        ``task`` is a registered task or its name; ``options=ScheduleOptions(...)``
        and/or its fields as keywords (``timezone=``, ``args=``, ``jitter=``,
        ...; keywords win) say how it runs, as for ``@scheduled``. The first
        tick fires after now. Errors (invalid cron, unknown timezone or task,
        name taken) are raised here; an unknown keyword raises ``TypeError``.
        """
        chosen = ScheduleOptions.merged(options, keywords, "add")
        self._templates.sync()
        if name in self._templates.code:
            raise InvalidScheduleError(f"schedule {name!r} is defined in code; pick another name")
        task_name = task.name if isinstance(task, Task) else task
        template = ScheduleTemplate.build(name, task_name, cron, chosen, origin="runtime")
        self._templates.check_handler(template)
        self._templates.check_route(template)
        handler = self.provider.tasks.get(task_name)
        if handler is not None:
            check_arguments(handler, template.args, dict(template.kwargs), name)
        await self.connect()
        await self.store.add_template(template, self.clock())
        logger.info("runtime schedule %r added: %s (%s)", name, template.cron, template.timezone)
        return template

    async def remove(self, name: str) -> None:
        """Delete a runtime template. Code-defined ones cannot be removed (pause them)."""
        self._templates.sync()
        if name in self._templates.code:
            raise ReadOnlyTemplateError(
                f"schedule {name!r} is defined in code: remove it from the code, or pause it"
            )
        await self.connect()
        if not await self.store.remove_template(name):
            raise TemplateNotFoundError(self._templates.not_found(name))

    async def pause(self, name: str) -> None:
        """Stop firing ``name`` (every scheduler sharing the store) until resumed."""
        await self._set_paused(name, True)

    async def resume(self, name: str) -> None:
        """Fire ``name`` again from the next tick; ticks during the pause are not caught up."""
        await self._set_paused(name, False)

    async def trigger(self, name: str) -> str:
        """Enqueue one job of ``name`` now, outside its schedule; return the job's id.

        The template's cursor does not move (its next tick fires as planned),
        and a paused template can be triggered too. The job carries the usual
        headers, with the current time as its fire time.
        """
        template = (await self.get(name)).template
        self._templates.check_route(template)
        job_id = await enqueue_tick(
            self.provider, self._templates.queue_for(template), template, self.clock()
        )
        logger.info("schedule %r triggered by hand: job %s", name, job_id)
        return job_id

    async def _set_paused(self, name: str, paused: bool) -> None:
        await self.get(name)  # raises if unknown
        await self.store.set_paused(name, paused, self.clock())


def _is_fire_time(template: ScheduleTemplate, cursor: float) -> bool:
    """A fresh cursor is "seen at", not a fire time; only show real fire times as last runs."""
    return template.schedule.next_after(cursor - 1) == cursor


def default_store(queue: TaskQueueProtocol) -> TemplateStore:
    """The store a scheduler uses when none is given: the primary backend's own
    Redis server (keys under ``lexigram:scheduler``) or PostgreSQL database
    (tables in the queue's schema) if it has one, else in-process memory."""
    system = getattr(queue, "system", "")
    if system == "redis":
        url = getattr(queue, "redis_url", None)
        if isinstance(url, str):
            return store_from_url(url)
    if system == "postgresql":
        dsn = getattr(queue, "postgres_dsn", None)
        if isinstance(dsn, str):
            schema = getattr(queue, "schema", None)
            return store_from_url(dsn, schema=schema if isinstance(schema, str) else "public")
    return MemoryTemplateStore()
