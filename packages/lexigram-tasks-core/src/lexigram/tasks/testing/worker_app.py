"""The worker process of the test suites, on any backend (not a test module).

    python -m lexigram.tasks.testing.worker_app CONFIG_JSON

``CONFIG_JSON`` is a :class:`~lexigram.tasks.testing.WorkerAppConfig`: the
queue as a :class:`~lexigram.tasks.testing.BackendSpec`, the event log file
and the worker settings. Start it with
:class:`~lexigram.tasks.testing.WorkerProcesses`. The tasks append
``event key pid time`` lines to the log (``start``, ``done``), so a test can tell
how often each job started and finished across processes and worker lives;
``ready`` is logged once the workers run. ``mode="consumer"`` runs the bare
protocol instead (see :func:`consume`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import cast

from lexigram.tasks.protocol import TaskQueueProtocol
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.testing._processes import EventLog, WorkerAppConfig


class _Ready:
    """A provider service that logs ``ready`` once the worker pools have started."""

    def __init__(self, log: EventLog) -> None:
        self.log = log

    async def start(self) -> None:
        self.log.write("ready", "worker")

    async def stop(self) -> None:
        """Nothing to stop."""


def build_provider(config: WorkerAppConfig) -> TaskProvider:
    """The provider of a worker process, with the app's tasks registered."""
    log = EventLog(config.log)
    provider = TaskProvider(
        queue=cast(TaskQueueProtocol, config.queue.build()),
        worker_count=config.worker_count,
        lease_seconds=config.lease_seconds,
        shutdown_timeout=config.shutdown_timeout,
        poll_interval=config.poll_interval,
        result_store=config.result_store.build() if config.result_store else None,
        rate_limiter=config.rate_limiter.build() if config.rate_limiter else None,
        registry_interval=config.registry_interval,
    )
    provider.add_service(_Ready(log))

    @provider.task(name="record")
    async def record(key: str) -> None:
        log.write("done", key)

    @provider.task(name="slow")
    async def slow(key: str, seconds: float) -> None:
        log.write("start", key)
        await asyncio.sleep(seconds)
        log.write("done", key)

    @provider.task(name="slow_sync")
    def slow_sync(key: str, seconds: float) -> None:
        log.write("start", key)
        time.sleep(seconds)
        log.write("done", key)

    @provider.task(name="hang_once")
    async def hang_once(key: str) -> None:
        """Hangs on its first run (the test kills that process); completes on the next."""
        log.write("start", key)
        if log.count("start")[key] == 1:
            await asyncio.sleep(3600)
        log.write("done", key)

    @provider.task(name="cancellable", max_retries=3)
    async def cancellable(key: str, seconds: float = 3600.0) -> None:
        """Waits; logs ``cancelled`` when a cancellation interrupts it."""
        log.write("start", key)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            log.write("cancelled", key)
            raise
        log.write("done", key)

    @provider.task(name="killer")
    async def killer(key: str, after: float = 0.3) -> None:
        """Kills its whole worker process (a crashing C extension, say), every time."""
        log.write("start", key)
        await asyncio.sleep(after)  # the jobs leased with it run meanwhile
        os._exit(70)

    @provider.task(name="limited", rate_limit=config.rate_limit)
    async def limited(key: str) -> None:
        log.write("start", key)
        log.write("done", key)

    @provider.task(name="square")
    def square(x: int) -> int:
        return x * x

    return provider


async def consume(config: WorkerAppConfig) -> None:
    """Drain the queue with the bare protocol from SIGUSR1 until SIGTERM, logging
    ``delivered`` per job (and ``redelivered`` for an attempt other than 1)."""
    log = EventLog(config.log)
    loop = asyncio.get_running_loop()
    go, stop = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, go.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    queue = cast(TaskQueueProtocol, config.queue.build())
    await queue.connect()
    try:
        log.write("ready", "consumer")
        await go.wait()
        waited_for_peer = False
        while not stop.is_set():
            deliveries = await queue.dequeue(
                max_jobs=5, lease_seconds=config.lease_seconds, wait=0.1
            )
            for delivery in deliveries:
                key = delivery.job_id or "malformed"
                log.write("delivered", key)
                if delivery.job is None or delivery.job.attempt != 1:
                    log.write("redelivered", key)
            if deliveries and not waited_for_peer:
                # Hold the first leases until another process has leased jobs too,
                # so taking part does not hang on which process started first.
                waited_for_peer = True
                await _peer_delivered(log, stop, _PEER_WAIT)
            await asyncio.sleep(0)  # hold the leases across a switch, as a worker would
            await queue.ack_many(deliveries)
    finally:
        await queue.disconnect()


#: How long a consumer holds its first leases waiting for another process's deliveries.
_PEER_WAIT = 30.0


async def _peer_delivered(log: EventLog, stop: asyncio.Event, timeout: float) -> None:
    """Return once another process logged ``delivered``, on ``stop``, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        if log.pids("delivered") - {os.getpid()}:
            return
        await asyncio.sleep(0.01)


def main(argv: list[str]) -> None:
    config = WorkerAppConfig.from_json(argv[0])
    if config.mode == "consumer":
        asyncio.run(consume(config))
    else:
        build_provider(config).run()


if __name__ == "__main__":
    main(sys.argv[1:])
