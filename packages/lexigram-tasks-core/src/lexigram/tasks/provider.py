"""TaskProvider: where tasks are registered, enqueued and run."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import (
    Any,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    Unpack,
    overload,
)

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from lexigram.tasks._controlling import Controlling
from lexigram.tasks._lifecycle import Service
from lexigram.tasks._otel import Telemetry
from lexigram.tasks.concurrency import ConcurrencyLimiter
from lexigram.tasks.events import EventBus, Handler
from lexigram.tasks.memory import MemoryTaskQueue
from lexigram.tasks.protocol import BaseTaskQueue, TaskQueueProtocol
from lexigram.tasks.ratelimit import Rate, RateLimiter
from lexigram.tasks.results import MemoryResultStore, ResultStore
from lexigram.tasks.task import RetryPolicy, Task, TaskLimits
from lexigram.tasks.worker import DeadLetterSink, WorkerPool, WorkerSettings
from lexigram.tasks.worker._presence import Presence
from lexigram.tasks.worker._settings import WorkerSettingsKeywords

logger = logging.getLogger("lexigram.tasks")

P = ParamSpec("P")
R = TypeVar("R")
E = TypeVar("E")


class _TaskDecorator(Protocol):
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


class TaskProvider(Controlling):
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
        concurrency_limiter: ConcurrencyLimiter | None = None,
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
        self.concurrency_limiter = concurrency_limiter
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
        self.worker_id: str | None = None
        self._presence: Presence | None = None
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
        max_concurrency: int | None = None,
        concurrency_key: Callable[..., str | int] | None = None,
        max_concurrency_per_key: int | None = None,
        rate_limit_key: Callable[..., str | int] | None = None,
        executor: Literal["thread", "process"] | None = None,
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
        max_concurrency: int | None = None,
        concurrency_key: Callable[..., str | int] | None = None,
        max_concurrency_per_key: int | None = None,
        rate_limit_key: Callable[..., str | int] | None = None,
        executor: Literal["thread", "process"] | None = None,
    ) -> Any:
        """Register a handler: ``@provider.task`` or ``@provider.task(max_retries=3, ...)``.

        The name defaults to ``module.function``. ``max_retries`` retries
        follow exponential backoff with jitter (``retry_backoff`` seconds,
        doubling, capped at ``retry_backoff_max``) for exceptions in
        ``retry_on``; ``rate_limit`` is e.g. ``"100/s"``; ``backend`` routes the
        task to a named backend. ``max_concurrency`` caps the runs of the task
        at once across every worker; ``concurrency_key`` (a function of the
        job's arguments returning a str or int) with ``max_concurrency_per_key``
        caps them per key, and ``rate_limit_key`` applies ``rate_limit`` per key.
        ``executor`` runs a plain ``def`` in a thread (``"thread"``) or in a
        child process that can be killed (``"process"``, also for an ``async
        def``: ``asyncio.run`` in the child); None takes the worker setting
        ``default_executor`` for a plain ``def`` (see docs/workers.md, Executors).
        """
        if backend is not None and backend not in self.backends:
            raise ValueError(
                f"task backend {backend!r} is not configured (backends: {', '.join(self.backends)})"
            )
        policy = RetryPolicy(retry_backoff, 2.0, retry_backoff_max, retry_on)
        limit = Rate.parse(rate_limit) if rate_limit else None
        limits = TaskLimits(
            max_concurrency, concurrency_key, max_concurrency_per_key, rate_limit_key
        )

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
                limits=limits,
                executor=executor,
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
