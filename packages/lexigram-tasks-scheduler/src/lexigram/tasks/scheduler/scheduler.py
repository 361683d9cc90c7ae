"""TaskScheduler: turns cron ticks into ordinary jobs on a provider's backends."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import random
import signal
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace import Span, SpanKind

from lexigram.tasks.memory import MemoryTaskQueue
from lexigram.tasks.protocol import Capability, TaskQueueProtocol
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.scheduler.errors import (
    InvalidScheduleError,
    ReadOnlyTemplateError,
    TemplateNotFoundError,
)
from lexigram.tasks.scheduler.registry import (
    ScheduleRegistry,
    check_arguments,
    default_registry,
    handler_name,
)
from lexigram.tasks.scheduler.store import (
    MemoryTemplateStore,
    StoreSnapshot,
    TemplateState,
    TemplateStore,
    store_from_url,
)
from lexigram.tasks.scheduler.template import (
    CatchUp,
    ScheduleOptions,
    ScheduleTemplate,
    TemplateInfo,
)
from lexigram.tasks.task import EnqueueOptions, Task

logger = logging.getLogger("lexigram.tasks.scheduler")

#: Job headers naming the template and the tick a scheduled job belongs to.
HEADER_TEMPLATE = "lexigram-schedule"
HEADER_FIRE_TIME = "lexigram-fire-time"

#: How long stop() waits for a tick in progress (a store or broker that hangs).
_STOP_TIMEOUT = 10.0

_SPAN_TICK = "lexigram.scheduler.tick"
_ATTR_DUE_COUNT = "lexigram.scheduler.due_count"
_ATTR_TEMPLATE = "lexigram.scheduler.template"
_ATTR_FIRE_TIME = "lexigram.scheduler.fire_time"
_ATTR_LOCK_WON = "lexigram.scheduler.lock_won"

_schedulers: weakref.WeakKeyDictionary[TaskProvider, TaskScheduler] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class FiredTick:
    """One job a scheduler enqueued for one tick of one template."""

    template: str
    fire_time: float
    job_id: str

    @property
    def fire_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.fire_time, UTC)


@dataclass(slots=True)
class _Due:
    template: ScheduleTemplate
    times: list[float]
    dropped: bool


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
        self._code: dict[str, ScheduleTemplate] = {}
        self._code_version = -1
        self._runtime_cache: dict[str, tuple[str, ScheduleTemplate | None]] = {}
        self._warned: set[str] = set()
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
        if self._code_version == self.registry.version:
            return
        code: dict[str, ScheduleTemplate] = {}
        for entry in self.registry:
            task_name = self._register_handler(entry.handler, entry.template.name)
            template = entry.template
            if template.task != task_name:
                template = replace(template, task=task_name)
            self._check_route(template)
            code[template.name] = template
        self._code = code
        self._code_version = self.registry.version

    def _register_handler(self, handler: Callable[..., Any], template: str) -> str:
        tasks = self.provider.tasks
        if isinstance(handler, Task):
            if tasks.get(handler.name) is not handler:
                raise InvalidScheduleError(
                    f"schedule {template!r}: task {handler.name!r} belongs to another provider"
                )
            return handler.name
        for task in tasks.values():
            if task.fn is handler:
                return task.name
        name = handler_name(handler)
        if name in tasks:
            raise InvalidScheduleError(
                f"schedule {template!r}: a different function is already registered "
                f"as task {name!r}"
            )
        self.provider.task(name=name)(handler)
        return name

    def _queue_for(self, template: ScheduleTemplate) -> TaskQueueProtocol:
        task = self.provider.tasks.get(template.task)
        backend = template.backend or (task.backend if task is not None else None)
        backend = backend or self.provider.primary
        if backend not in self.provider.backends:
            raise InvalidScheduleError(
                f"schedule {template.name!r}: backend {backend!r} is not configured "
                f"(backends: {', '.join(self.provider.backends)})"
            )
        return self.provider.backends[backend]

    def _check_route(self, template: ScheduleTemplate) -> None:
        queue = self._queue_for(template)
        needs = [
            (template.jitter > 0, Capability.DELAY, "jitter"),
            (bool(template.priority), Capability.PRIORITY, "priority"),
        ]
        for wanted, capability, option in needs:
            if wanted and capability not in queue.capabilities:
                raise InvalidScheduleError(
                    f"schedule {template.name!r}: {option} needs a backend with the "
                    f"{capability.value!r} capability, which {type(queue).__name__} "
                    "does not declare"
                )

    def _check_handler(self, template: ScheduleTemplate) -> None:
        if template.task in self.provider.tasks or not self.provider.strict:
            return
        known = ", ".join(sorted(self.provider.tasks)) or "none"
        raise InvalidScheduleError(
            f"schedule {template.name!r} has no handler: no task named {template.task!r} is "
            f"registered with the provider (registered: {known})"
        )

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
        logger.info("scheduler started with %d code template(s)", len(self._code))

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
            self.sync_code_templates()
            moment = self.clock() if now is None else now
            snapshot = await self.store.load()
            due: builtins.list[_Due] = []
            upcoming: builtins.list[float] = []
            for template in self._all_templates(snapshot):
                state = snapshot.states.get(template.name)
                if state is None:
                    cursor = await self.store.init_cursor(template.name, moment)
                    state = TemplateState(cursor)
                if state.paused:
                    continue
                keep = template.catch_up_limit if template.catch_up is CatchUp.ALL else 1
                times, dropped = template.schedule.due_times(state.last_fire, moment, keep)
                if times:
                    due.append(_Due(template, times, dropped))
                upcoming.append(template.schedule.next_after(max(moment, state.last_fire)))
            self._next_wakeup = min(upcoming, default=None)
            if not due:
                return []
            with self.provider.telemetry.tracer.start_as_current_span(
                _SPAN_TICK, context=otel_context.Context(), kind=SpanKind.INTERNAL
            ) as span:
                span.set_attribute(_ATTR_DUE_COUNT, sum(len(d.times) for d in due))
                fired: builtins.list[FiredTick] = []
                for item in due:
                    fired.extend(await self._fire(item, moment, span))
                return fired

    def _all_templates(self, snapshot: StoreSnapshot) -> builtins.list[ScheduleTemplate]:
        templates = dict(self._code)
        for gone in self._runtime_cache.keys() - snapshot.templates.keys():
            del self._runtime_cache[gone]
        for name, doc in snapshot.templates.items():
            if name in templates:
                continue  # the code's definition wins over a stale runtime copy
            template = self._runtime_template(name, doc)
            if template is not None and self._knows_task(template):
                templates[name] = template
        return list(templates.values())

    def _runtime_template(self, name: str, doc: Mapping[str, Any]) -> ScheduleTemplate | None:
        key = json.dumps(doc, sort_keys=True)
        cached = self._runtime_cache.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        template: ScheduleTemplate | None
        try:
            template = ScheduleTemplate.from_dict({**doc, "origin": "runtime"})
        except (InvalidScheduleError, TypeError) as exc:
            logger.error(
                "runtime schedule %r in the store is invalid and is ignored: %s", name, exc
            )
            template = None
        self._runtime_cache[name] = (key, template)
        return template

    def _knows_task(self, template: ScheduleTemplate) -> bool:
        try:
            self._check_handler(template)
            self._check_route(template)
        except InvalidScheduleError as exc:
            if template.name not in self._warned:
                self._warned.add(template.name)
                logger.warning("%s; this scheduler leaves it to schedulers that know it", exc)
            return False
        self._warned.discard(template.name)
        return True

    async def _fire(self, due: _Due, now: float, span: Span) -> builtins.list[FiredTick]:
        template = due.template
        latest = due.times[-1]
        previous = await self.store.claim(template.name, latest)
        won = previous is not None
        if span.is_recording():
            span.add_event(
                "claim",
                {_ATTR_TEMPLATE: template.name, _ATTR_FIRE_TIME: latest, _ATTR_LOCK_WON: won},
            )
        if previous is None:
            return []
        # Another scheduler may have fired some of these before our store read.
        times = [t for t in due.times if t > previous]
        if template.catch_up is CatchUp.SKIP:
            to_fire = [latest] if now - latest <= template.misfire_grace else []
        elif template.catch_up is CatchUp.ONCE:
            to_fire = [latest]
        else:
            to_fire = times
        if len(to_fire) < len(times) or due.dropped:
            logger.warning(
                "schedule %r: missed ticks since %s not run (catch_up=%s)",
                template.name,
                template.schedule.local(previous).isoformat(),
                template.catch_up.value,
            )
        fired: builtins.list[FiredTick] = []
        for fire_time in to_fire:
            try:
                job_id = await self._enqueue(template, fire_time)
            except Exception:
                # Give the unsent ticks back, so this or another scheduler retries them.
                sent = fired[-1].fire_time if fired else previous
                await self.store.release(template.name, latest, sent)
                raise
            fired.append(FiredTick(template.name, fire_time, job_id))
        return fired

    async def _enqueue(self, template: ScheduleTemplate, fire_time: float) -> str:
        queue = self._queue_for(template)
        dedup_key = (
            f"lexigram-schedule:{template.name}:{fire_time:.0f}"
            if Capability.UNIQUE in queue.capabilities
            else None
        )
        options = EnqueueOptions(
            delay=random.uniform(0, template.jitter) if template.jitter else None,
            priority=template.priority,
            dedup_key=dedup_key,
            headers={
                HEADER_TEMPLATE: template.name,
                HEADER_FIRE_TIME: template.schedule.local(fire_time).isoformat(),
            },
            backend=template.backend,
        )
        job = self.provider.build_job(template.task, template.args, template.kwargs, options)
        handle = await self.provider.enqueue_job(job, backend=template.backend)
        logger.debug("schedule %r fired for %s: job %s", template.name, fire_time, handle.id)
        return handle.id

    # -- management ---------------------------------------------------------------

    async def list(self) -> builtins.list[TemplateInfo]:
        """Every template (code-defined and runtime), with pause state, last and next run."""
        await self.connect()
        self.sync_code_templates()
        snapshot = await self.store.load()
        now = self.clock()
        templates = dict(self._code)
        for name, doc in snapshot.templates.items():
            if name not in templates:
                template = self._runtime_template(name, doc)
                if template is not None:
                    templates[name] = template
        return [self._info(t, snapshot.states.get(t.name), now) for t in templates.values()]

    async def get(self, name: str) -> TemplateInfo:
        """One template's listing; :class:`TemplateNotFoundError` if there is none."""
        for info in await self.list():
            if info.name == name:
                return info
        raise TemplateNotFoundError(self._not_found(name))

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
        self.sync_code_templates()
        if name in self._code:
            raise InvalidScheduleError(f"schedule {name!r} is defined in code; pick another name")
        task_name = task.name if isinstance(task, Task) else task
        template = ScheduleTemplate.build(name, task_name, cron, chosen, origin="runtime")
        self._check_handler(template)
        self._check_route(template)
        handler = self.provider.tasks.get(task_name)
        if handler is not None:
            check_arguments(handler, template.args, dict(template.kwargs), name)
        await self.connect()
        await self.store.add_template(template, self.clock())
        logger.info("runtime schedule %r added: %s (%s)", name, template.cron, template.timezone)
        return template

    async def remove(self, name: str) -> None:
        """Delete a runtime template. Code-defined ones cannot be removed (pause them)."""
        self.sync_code_templates()
        if name in self._code:
            raise ReadOnlyTemplateError(
                f"schedule {name!r} is defined in code: remove it from the code, or pause it"
            )
        await self.connect()
        if not await self.store.remove_template(name):
            raise TemplateNotFoundError(self._not_found(name))

    async def pause(self, name: str) -> None:
        """Stop firing ``name`` (every scheduler sharing the store) until resumed."""
        await self._set_paused(name, True)

    async def resume(self, name: str) -> None:
        """Fire ``name`` again from the next tick; ticks during the pause are not caught up."""
        await self._set_paused(name, False)

    async def _set_paused(self, name: str, paused: bool) -> None:
        await self.get(name)  # raises if unknown
        await self.store.set_paused(name, paused, self.clock())

    def _not_found(self, name: str) -> str:
        code = ", ".join(sorted(self._code)) or "none"
        return f"no schedule named {name!r} (code templates: {code})"


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
