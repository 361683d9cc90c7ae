"""TaskProvider: where tasks are registered, enqueued and run."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import (
    Any,
    ParamSpec,
    Protocol,
    Self,
    TypeVar,
    Unpack,
    overload,
    runtime_checkable,
)

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from lexigram.tasks._otel import Telemetry
from lexigram.tasks.environment import current_environment, is_development
from lexigram.tasks.errors import ConfigurationError, UnknownTaskError
from lexigram.tasks.events import EventBus, Handler
from lexigram.tasks.handle import JobHandle
from lexigram.tasks.job import Job
from lexigram.tasks.memory import MemoryTaskQueue
from lexigram.tasks.protocol import BaseTaskQueue, QueueCounts, TaskQueueProtocol
from lexigram.tasks.ratelimit import LocalRateLimiter, Rate, RateLimiter
from lexigram.tasks.results import MemoryResultStore, ResultStore
from lexigram.tasks.task import EnqueueOptions, RetryPolicy, Task
from lexigram.tasks.worker import DeadLetterSink, WorkerPool, WorkerSettings
from lexigram.tasks.worker._settings import SettingsAttributes, WorkerSettingsKeywords

logger = logging.getLogger("lexigram.tasks")

P = ParamSpec("P")
R = TypeVar("R")
E = TypeVar("E")


@runtime_checkable
class Service(Protocol):
    """Something that runs beside the workers, e.g. the scheduler."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class _TaskDecorator(Protocol):
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


class TaskProvider(SettingsAttributes):
    """Registers tasks, enqueues jobs and runs worker pools over one or more backends.

    ``TaskProvider(queue=q, worker_count=4)`` uses one backend;
    ``TaskProvider(backends={"primary": q1, "notifications": q2})`` several,
    the first (or ``primary=``) being the default route. ``async with provider``
    connects and runs the workers; ``await provider.connect()`` only connects,
    for processes that enqueue but do not run jobs. How the pools run is a
    :class:`~lexigram.tasks.worker.WorkerSettings`: ``settings=WorkerSettings(...)``,
    or its fields as keywords (``worker_count=4``), which win over ``settings``;
    ``provider.settings.worker_count`` (or ``provider.worker_count``) reads one.
    ``max_job_bytes`` caps the encoded size of a job at enqueue on every
    backend deriving from :class:`~lexigram.tasks.protocol.BaseTaskQueue`
    (default: theirs, 10 MiB).
    """

    def __init__(
        self,
        queue: TaskQueueProtocol | None = None,
        *,
        backends: Mapping[str, TaskQueueProtocol] | None = None,
        primary: str | None = None,
        settings: WorkerSettings | None = None,
        result_store: ResultStore | None = None,
        result_ttl: float | None = None,
        dead_letter: DeadLetterSink | None = None,
        rate_limiter: RateLimiter | None = None,
        global_rate_limit: str | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        trace_links_only: bool = False,
        environment: str | None = None,
        strict: bool = True,
        max_job_bytes: int | None = None,
        **worker_settings: Unpack[WorkerSettingsKeywords],
    ) -> None:
        self.settings = WorkerSettings.merged(settings, worker_settings, "TaskProvider")
        if (queue is None) == (backends is None):
            raise ValueError("give either queue=... or backends={name: queue, ...}")
        self.backends: dict[str, TaskQueueProtocol] = (
            {"default": queue} if queue is not None else dict(backends or {})
        )
        if not self.backends:
            raise ValueError("backends must name at least one backend")
        self.primary = primary or next(iter(self.backends))
        if self.primary not in self.backends:
            raise ValueError(f"primary backend {self.primary!r} is not in backends")
        if max_job_bytes is not None:
            _apply_max_job_bytes(self.backends, max_job_bytes)
        self.max_job_bytes = max_job_bytes
        if result_store is None and any(
            isinstance(q, MemoryTaskQueue) for q in self.backends.values()
        ):
            result_store = MemoryResultStore()
        self.result_store = result_store
        self.result_ttl = result_ttl
        self.dead_letter = dead_letter
        self.rate_limiter = rate_limiter
        self.global_rate_limit = Rate.parse(global_rate_limit) if global_rate_limit else None
        self._global_rate_text = global_rate_limit
        self.environment = environment
        self.strict = strict
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.events = EventBus()
        self.telemetry = Telemetry(
            tracer_provider, meter_provider=meter_provider, links_only=trace_links_only
        )
        self.pools: dict[str, WorkerPool] = {}
        self._services: list[Service] = []
        if isinstance(dead_letter, Service):
            self._services.append(dead_letter)  # e.g. a DLQ feeding from RabbitMQ's DLX
        self._connected = False
        self._stop_requested: asyncio.Event | None = None

    def __repr__(self) -> str:
        backends = ", ".join(f"{n}={q!r}" for n, q in self.backends.items())
        return f"TaskProvider({backends}, worker_count={self.settings.worker_count})"

    @classmethod
    def from_config(cls, source: str | Path | Mapping[str, Any], **overrides: Any) -> TaskProvider:
        """Build a provider from a YAML file path or a mapping (see the configuration docs)."""
        from lexigram.tasks.config import provider_from_config

        return provider_from_config(source, **overrides)

    @property
    def queue(self) -> TaskQueueProtocol:
        """The primary backend."""
        return self.backends[self.primary]

    # -- registering tasks -----------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        max_retries: int = 0,
        timeout: float | None = None,
        retry_backoff: float = 1.0,
        retry_backoff_max: float = 300.0,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        priority: int = 0,
        backend: str | None = None,
        rate_limit: str | None = None,
        store_result: bool = True,
    ) -> _TaskDecorator: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        max_retries: int = 0,
        timeout: float | None = None,
        retry_backoff: float = 1.0,
        retry_backoff_max: float = 300.0,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        priority: int = 0,
        backend: str | None = None,
        rate_limit: str | None = None,
        store_result: bool = True,
    ) -> Any:
        """Register a handler: ``@provider.task`` or ``@provider.task(max_retries=3, ...)``.

        The name defaults to ``module.function``. ``max_retries`` retries
        follow exponential backoff with jitter (``retry_backoff`` seconds,
        doubling, capped at ``retry_backoff_max``) for exceptions in
        ``retry_on``; ``rate_limit`` is e.g. ``"100/s"``; ``backend`` routes the
        task to a named backend.
        """
        if backend is not None and backend not in self.backends:
            raise ValueError(
                f"task backend {backend!r} is not configured (backends: {', '.join(self.backends)})"
            )
        policy = RetryPolicy(retry_backoff, 2.0, retry_backoff_max, retry_on)
        limit = Rate.parse(rate_limit) if rate_limit else None

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            if task_name in self.tasks:
                raise ValueError(f"a task named {task_name!r} is already registered")
            task: Task[Any, Any] = Task(
                func,
                self,
                name=task_name,
                is_async=inspect.iscoroutinefunction(func),
                max_retries=max_retries,
                timeout=timeout,
                retry=policy,
                priority=priority,
                backend=backend,
                rate_limit=limit,
                store_result=store_result,
            )
            self.tasks[task_name] = task
            return task

        return register if fn is None else register(fn)

    def on(self, event_type: type[E]) -> Callable[[Handler[E]], Handler[E]]:
        """Subscribe to a lifecycle event: ``@provider.on(TaskFailedEvent)``."""
        return self.events.on(event_type)

    def add_service(self, service: Service) -> None:
        """Start and stop ``service`` with the workers (the scheduler uses this)."""
        self._services.append(service)

    # -- enqueueing ------------------------------------------------------------

    def build_job(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        options: EnqueueOptions,
    ) -> Job:
        """The job ``enqueue(name, *args, **kwargs)`` would send, without sending it.

        Raises :class:`TaskArgumentsError` when the task is registered here and
        its handler cannot take these arguments.
        """
        task = self.tasks.get(name)
        if task is not None:
            task.check_arguments(args, kwargs)
        elif self.strict and self.tasks:
            raise UnknownTaskError(
                f"no task named {name!r} is registered with this provider "
                f"(registered: {', '.join(sorted(self.tasks))}); "
                "pass strict=False to TaskProvider to enqueue tasks other processes define"
            )
        queue = self._route(name, options.backend)
        return Job(
            task=name,
            args=list(args),
            kwargs=dict(kwargs),
            queue=queue.queue_name,
            max_retries=task.max_retries if task is not None else 0,
            run_at=options.run_at(),
            priority=options.priority
            if options.priority is not None
            else (task.priority if task is not None else 0),
            timeout=task.timeout if task is not None else None,
            dedup_key=options.dedup_key,
            headers=dict(options.headers) if options.headers else {},
        )

    async def enqueue(self, name: str, /, *args: Any, **kwargs: Any) -> JobHandle[Any]:
        """Enqueue the task registered as ``name`` with these arguments."""
        return await self.enqueue_job(self.build_job(name, args, kwargs, EnqueueOptions()))

    async def enqueue_job(self, job: Job, *, backend: str | None = None) -> JobHandle[Any]:
        """Send a prepared job (see :meth:`Task.job`) to its backend."""
        if not self._connected:
            await self.connect()
        queue = self._route(job.task, backend)
        with self.telemetry.send(job, queue.system):
            job_id = await queue.enqueue(job)
        return JobHandle(job_id, job.task, job.queue, self.result_store)

    async def enqueue_many(
        self, jobs: Iterable[Job], *, backend: str | None = None
    ) -> list[JobHandle[Any]]:
        """Send many jobs in as few round trips as each backend allows."""
        if not self._connected:
            await self.connect()
        groups: dict[str, list[Job]] = {}
        for job in jobs:
            groups.setdefault(self._route_name(job.task, backend), []).append(job)
        handles: list[JobHandle[Any]] = []
        for name, group in groups.items():
            queue = self.backends[name]
            with self.telemetry.send_many(group, queue.system, queue.queue_name):
                ids = await queue.enqueue_many(group)
            handles.extend(
                JobHandle(i, j.task, j.queue, self.result_store)
                for i, j in zip(ids, group, strict=True)
            )
        return handles

    def _route_name(self, task_name: str, backend: str | None) -> str:
        if backend is None:
            task = self.tasks.get(task_name)
            backend = task.backend if task is not None and task.backend else self.primary
        if backend not in self.backends:
            raise ValueError(
                f"backend {backend!r} is not configured (backends: {', '.join(self.backends)})"
            )
        return backend

    def _route(self, task_name: str, backend: str | None) -> TaskQueueProtocol:
        return self.backends[self._route_name(task_name, backend)]

    # -- lifecycle -------------------------------------------------------------

    async def connect(self) -> None:
        """Connect every backend and the result store, without starting workers."""
        if self._connected:
            return
        for queue in self.backends.values():
            await queue.connect()
        if self.result_store is not None:
            await self.result_store.connect()
        self._connected = True

    async def disconnect(self) -> None:
        """Close every connection (stop the workers first with :meth:`stop`)."""
        if not self._connected:
            return
        self._connected = False
        if self.result_store is not None:
            await self.result_store.disconnect()
        closer = getattr(self.rate_limiter, "disconnect", None)
        if closer is not None:  # e.g. RedisRateLimiter, which connects on first use
            await closer()
        for queue in self.backends.values():
            await queue.disconnect()

    async def start(self, backends: Iterable[str] | None = None) -> None:
        """Connect and start a worker pool per backend (or only those named).

        Raises :class:`~lexigram.tasks.ConfigurationError` before connecting
        when no task is registered: such workers could run no job they take.
        """
        names = list(backends) if backends is not None else list(self.backends)
        for name in names:
            if name not in self.backends:
                raise ValueError(f"unknown backend {name!r} (backends: {', '.join(self.backends)})")
        if names and not self.tasks:
            raise ConfigurationError(
                "no tasks are registered with this provider, so its workers could run no job: "
                "register them (@provider.task) before starting workers; a process that only "
                "enqueues calls provider.connect() instead"
            )
        await self.connect()
        for name in names:
            queue = self.backends[name]
            if isinstance(queue, MemoryTaskQueue) and not is_development(self.environment):
                logger.warning(
                    "MemoryTaskQueue is used in environment %r: jobs are lost when this "
                    "process exits; use a persistent backend outside development and testing",
                    current_environment(self.environment),
                )
            if name in self.pools:
                continue
            pool = WorkerPool(
                queue,
                self.tasks,
                settings=self.settings,
                result_store=self.result_store,
                result_ttl=self.result_ttl,
                events=self.events,
                telemetry=self.telemetry,
                dead_letter=self.dead_letter,
                rate_limiter=self.rate_limiter,
                global_rate_limit=self.global_rate_limit,
            )
            self.pools[name] = pool
            await pool.start()
        if names:
            self._report_local_rate_limits(names)
        for service in self._services:
            await service.start()

    def _report_local_rate_limits(self, names: list[str]) -> None:
        """Say at start-up when rate limits are counted per process, not per deployment."""
        if self.rate_limiter is not None and not isinstance(self.rate_limiter, LocalRateLimiter):
            return
        limited = [f"global_rate_limit {self._global_rate_text}"] if self.global_rate_limit else []
        limited += [f"rate_limit of {n}" for n, t in sorted(self.tasks.items()) if t.rate_limit]
        if not limited:
            return
        single = all(isinstance(self.backends[n], MemoryTaskQueue) for n in names)
        logger.log(
            logging.INFO if single else logging.WARNING,
            "%s: counted per worker process (in-process limiter); set tasks.rate_limiter "
            "(e.g. type: redis) or rate_limiter= for a limit shared by every process",
            ", ".join(limited),
        )

    async def stop(self) -> None:
        """Stop services and workers gracefully, then disconnect."""
        for service in reversed(self._services):
            await service.stop()
        pools, self.pools = list(self.pools.values()), {}
        await asyncio.gather(*(pool.stop() for pool in pools))
        await self.disconnect()

    async def counts(self) -> dict[str, QueueCounts]:
        """Job counts of every backend, by backend name."""
        if not self._connected:
            await self.connect()
        return {name: await queue.counts() for name, queue in self.backends.items()}

    def request_stop(self) -> None:
        """Ask :meth:`serve` to shut down gracefully (what SIGTERM does)."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def serve(self, backends: Iterable[str] | None = None) -> None:
        """Run the workers until SIGTERM/SIGINT or :meth:`request_stop`; a second signal
        exits at once (unfinished jobs then come back when their leases lapse)."""
        self._stop_requested = stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[int] = []

        def on_signal(signum: int) -> None:
            if stop.is_set():
                logger.warning("second %s: exiting now", signal.Signals(signum).name)
                os._exit(128 + int(signum))
            logger.info("%s received: shutting down gracefully", signal.Signals(signum).name)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, on_signal, signum)
                installed.append(signum)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread, or a platform without signal handlers
        try:
            await self.start(backends)
            await stop.wait()
        finally:
            try:
                await self.stop()  # handlers stay installed: a second signal exits at once
            finally:
                for handled in installed:
                    loop.remove_signal_handler(handled)
                self._stop_requested = None

    def run(self, backends: Iterable[str] | None = None) -> None:
        """Blocking worker process: ``provider.run()`` until SIGTERM/SIGINT."""
        asyncio.run(self.serve(backends))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _apply_max_job_bytes(backends: Mapping[str, TaskQueueProtocol], limit: int) -> None:
    """Set ``max_job_bytes`` on every backend that enforces it (a :class:`BaseTaskQueue`)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_job_bytes must be a positive number of bytes, got {limit!r}")
    for name, queue in backends.items():
        if isinstance(queue, BaseTaskQueue):
            queue.max_job_bytes = limit
        else:
            logger.warning(
                "backend %r (%s) does not derive from BaseTaskQueue, so max_job_bytes=%d is "
                "not applied to it: its enqueue enforces its own limit, if any",
                name,
                type(queue).__name__,
                limit,
            )
