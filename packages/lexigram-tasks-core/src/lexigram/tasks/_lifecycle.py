"""The lifecycle of :class:`~lexigram.tasks.TaskProvider`: connecting, worker pools, signals."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from lexigram.tasks._otel import Telemetry
from lexigram.tasks.concurrency import ConcurrencyLimiter
from lexigram.tasks.environment import current_environment, is_development
from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.events import EventBus
from lexigram.tasks.memory import MemoryTaskQueue
from lexigram.tasks.protocol import QueueCounts, TaskQueueProtocol
from lexigram.tasks.ratelimit import LocalRateLimiter, Rate, RateLimiter
from lexigram.tasks.results import ResultStore
from lexigram.tasks.task import Task
from lexigram.tasks.worker import DeadLetterSink, WorkerPool
from lexigram.tasks.worker._presence import Presence
from lexigram.tasks.worker._settings import SettingsAttributes
from lexigram.tasks.worker.pool import new_worker_id

logger = logging.getLogger("lexigram.tasks")


@runtime_checkable
class Service(Protocol):
    """Something that runs beside the workers, e.g. the scheduler."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Lifecycle(SettingsAttributes):
    """Connects the backends and runs their worker pools (a base of ``TaskProvider``)."""

    backends: dict[str, TaskQueueProtocol]
    tasks: dict[str, Task[Any, Any]]
    result_store: ResultStore | None
    result_ttl: float | None
    dead_letter: DeadLetterSink | None
    rate_limiter: RateLimiter | None
    concurrency_limiter: ConcurrencyLimiter | None
    global_rate_limit: Rate | None
    environment: str | None
    events: EventBus
    telemetry: Telemetry
    pools: dict[str, WorkerPool]
    #: This process's worker id (``host:pid:suffix``), shared by its pools; set by start().
    worker_id: str | None
    _presence: Presence | None
    _global_rate_text: str | None
    _services: list[Service]
    _connected: bool
    _stop_requested: asyncio.Event | None

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
        for limiter in (self.rate_limiter, self.concurrency_limiter):
            closer = getattr(limiter, "disconnect", None)
            if closer is not None:  # e.g. RedisRateLimiter, which connects on first use
                await closer()
        for queue in self.backends.values():
            await queue.disconnect()

    async def start(self, backends: Iterable[str] | None = None) -> None:
        """Connect and start a worker pool per backend (or only those named).

        Raises :class:`~lexigram.tasks.ConfigurationError` before connecting
        when no task is registered: such workers could run no job they take.
        The pools share one :attr:`worker_id`, registered in the live-worker
        list of each backend declaring ``Capability.WORKERS``.
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
        if names and self._presence is None:
            if self.worker_id is None:
                self.worker_id = new_worker_id()
            self._presence = Presence(self.worker_id, self.settings.registry_interval)
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
                concurrency_limiter=self.concurrency_limiter,
                global_rate_limit=self.global_rate_limit,
                worker_id=self.worker_id,
            )
            self.pools[name] = pool
            await pool.start()
            assert self._presence is not None
            await self._presence.add(name, pool)
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
        presence, self._presence = self._presence, None
        if presence is not None:
            await presence.stop()
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
