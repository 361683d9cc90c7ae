"""The LISTEN connection of a :class:`PostgresResultStore`, shared by all its waiters."""

from __future__ import annotations

import asyncio
from typing import Any

from lexigram.tasks.postgres._listener import Listener


class ResultListener(Listener):
    """Wakes the waiters of one job id when its result is stored.

    Every result stored in the schema notifies one channel with the job id
    as payload; this process's waiters are looked up by that id. When the
    connection is opened again after a loss (or closed), every waiter is
    woken to read its row, since notifications sent meanwhile are gone.
    """

    def __init__(self, dsn: str, channel: str, timeout: float, *, application_name: str) -> None:
        super().__init__(dsn, channel, "", timeout, application_name=application_name)
        self._by_job: dict[str, set[asyncio.Future[None]]] = {}
        self._closed = False

    async def ensure(self) -> None:
        if not self._closed:
            await super().ensure()

    async def close(self) -> None:
        """Close the connection for good (a closed listener never reconnects)."""
        self._closed = True
        await super().close()

    def register(self, job_id: str) -> asyncio.Future[None]:
        """A future resolved on the next notification for ``job_id`` (or a reconnect)."""
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._by_job.setdefault(job_id, set()).add(wake)
        return wake

    def forget(self, job_id: str, wake: asyncio.Future[None]) -> None:
        waiting = self._by_job.get(job_id)
        if waiting is not None:
            waiting.discard(wake)
            if not waiting:
                del self._by_job[job_id]

    def _on_notify(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        for wake in self._by_job.get(payload, ()):
            _resolve(wake)

    def _wake(self) -> None:
        super()._wake()
        for waiting in self._by_job.values():
            for wake in waiting:
                _resolve(wake)


def _resolve(wake: asyncio.Future[None]) -> None:
    if not wake.done():
        wake.set_result(None)
