"""Running the provider's coroutines from Django's synchronous code.

A provider's connections belong to the event loop they were opened on, so
every send from sync code must reach one loop, not a new one per call:

- under an ASGI server, sync code runs in a thread that ``sync_to_async``
  started from the server's loop; ``async_to_sync`` sends the coroutine back
  to that loop, the one async views enqueue on directly;
- under WSGI (or in a management command) no loop runs anywhere, so the
  first send starts one in a daemon thread and every later send uses it.
  :func:`shutdown` disconnects the providers it connected and stops it (at
  interpreter exit, or when a test asks).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from asgiref.sync import SyncToAsync, async_to_sync

from lexigram.tasks.provider import TaskProvider

T = TypeVar("T")

#: Seconds :func:`shutdown` waits for each provider to disconnect.
_CLOSE_TIMEOUT = 10.0


class _Loop:
    """An event loop in a daemon thread, and the providers connected on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.providers: list[TaskProvider] = []
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="lexigram-tasks-django", daemon=True
        )
        self.thread.start()

    def run(self, provider: TaskProvider, make: Callable[[], Awaitable[T]]) -> T:
        if provider not in self.providers:
            self.providers.append(provider)
        return asyncio.run_coroutine_threadsafe(_call(make), self.loop).result()

    def close(self) -> None:
        for provider in self.providers:
            future = asyncio.run_coroutine_threadsafe(provider.disconnect(), self.loop)
            future.result(_CLOSE_TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(_CLOSE_TIMEOUT)
        self.loop.close()


async def _call(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


_lock = threading.Lock()
_background: _Loop | None = None


def run_sync(provider: TaskProvider, make: Callable[[], Awaitable[T]]) -> T:
    """``await make()`` from sync code, on the loop ``provider`` lives on (see the module)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "this call blocks, and the current thread runs an event loop: from async code, "
            "run the function holding transaction.atomic() with sync_to_async, or await "
            "task.enqueue(...) directly"
        )
    if _server_loop() is not None:
        return async_to_sync(_call)(make)
    global _background
    with _lock:
        if _background is None:
            _background = _Loop()
        background = _background
    return background.run(provider, make)


def _server_loop() -> asyncio.AbstractEventLoop | None:
    """The running loop that started this thread through ``sync_to_async``, if any.

    asgiref keeps it in a thread-local, which its own ``async_to_sync`` reads
    the same way (with the process id, as a forked child must not use it).
    """
    local = SyncToAsync.threadlocal
    if getattr(local, "main_event_loop_pid", None) != os.getpid():
        return None
    loop: asyncio.AbstractEventLoop | None = getattr(local, "main_event_loop", None)
    return loop if loop is not None and loop.is_running() else None


def shutdown() -> None:
    """Disconnect the providers connected on the background loop, and stop it.

    Runs at interpreter exit; a later send starts a new loop.
    """
    global _background
    with _lock:
        background, _background = _background, None
    if background is not None:
        background.close()


atexit.register(shutdown)
