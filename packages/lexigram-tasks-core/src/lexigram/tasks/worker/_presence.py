"""The live-worker list: a worker process registers itself with each backend that keeps one.

One :class:`Presence` per process (the provider's): it registers the same
worker id with every backend declaring
:attr:`~lexigram.tasks.Capability.WORKERS`, refreshes the entry every
``registry_interval`` seconds (it expires after three intervals, so a killed
worker disappears by itself), and removes it on a clean stop. A failed
registry write is logged; it never stops the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

from lexigram.tasks._version import __version__
from lexigram.tasks.control import WorkerInfo, require
from lexigram.tasks.protocol import Capability
from lexigram.tasks.worker.pool import WorkerPool

logger = logging.getLogger("lexigram.tasks.worker")

#: An entry lives this many refresh intervals after its last refresh.
TTL_INTERVALS = 3


class Presence:
    """Keeps one worker process's entry in the live-worker lists of its backends."""

    def __init__(self, worker_id: str, interval: float) -> None:
        self.worker_id = worker_id
        self.interval = interval
        self.started_at = time.time()
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._pools: dict[str, WorkerPool] = {}  # backend name -> its pool
        self._registries: dict[str, Any] = {}  # backend name -> the queue, if it keeps the list
        self._refresher: asyncio.Task[None] | None = None

    def info(self) -> WorkerInfo:
        """This worker as it is now."""
        pools = list(self._pools.values())
        return WorkerInfo(
            id=self.worker_id,
            host=self._host,
            pid=self._pid,
            version=__version__,
            backends=list(self._pools),
            concurrency=sum(p.settings.worker_count for p in pools),
            started_at=self.started_at,
            heartbeat_at=time.time(),
            running=[job_id for p in pools for job_id in p.running_ids()],
            done=sum(p.jobs_done for p in pools),
            failed=sum(p.jobs_failed for p in pools),
        )

    async def add(self, name: str, pool: WorkerPool) -> None:
        """Count ``pool`` (backend ``name``) in; register at once where the backend keeps a list."""
        self._pools[name] = pool
        if Capability.WORKERS in pool.queue.capabilities:
            self._registries[name] = pool.queue
        if not self._registries:
            return
        await self._register()
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_loop(), name="lexigram-presence")

    async def stop(self) -> None:
        """Stop refreshing and remove the entry from every list (a clean exit)."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        for name, queue in self._registries.items():
            try:
                await require(queue, "deregister_worker", Capability.WORKERS)(self.worker_id)
            except Exception as exc:
                logger.warning(
                    "removing worker %s from the list of backend %r failed (%s: %s); "
                    "its entry expires by itself",
                    self.worker_id,
                    name,
                    type(exc).__name__,
                    exc,
                )
        self._registries.clear()
        self._pools.clear()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._register()

    async def _register(self) -> None:
        info = self.info()
        ttl = self.interval * TTL_INTERVALS
        for name, queue in self._registries.items():
            try:
                await require(queue, "register_worker", Capability.WORKERS)(info, ttl)
            except Exception as exc:
                logger.warning(
                    "registering worker %s with backend %r failed (%s: %s); trying again in %gs",
                    self.worker_id,
                    name,
                    type(exc).__name__,
                    exc,
                    self.interval,
                )
