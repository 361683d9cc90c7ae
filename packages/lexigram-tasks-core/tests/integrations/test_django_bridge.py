"""Which event loop Django's sync code sends jobs on (memory backend, no Django settings).

Importing the integration imports ``django.db`` but configures nothing, so
this session stays free of Django settings.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async

from lexigram.tasks import MemoryTaskQueue, TaskProvider
from lexigram.tasks.handle import JobHandle
from lexigram.tasks.integrations.django._bridge import run_sync, shutdown

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def provider() -> Iterator[TaskProvider]:
    provider = TaskProvider(queue=MemoryTaskQueue("django-bridge"))

    @provider.task(name="ping")
    def ping() -> None: ...

    yield provider
    shutdown()


def _sender(provider: TaskProvider, loops: list[asyncio.AbstractEventLoop]) -> JobHandle[object]:
    """What an on_commit callback does: a blocking send, noting the loop it ran on."""

    async def send() -> JobHandle[object]:
        loops.append(asyncio.get_running_loop())
        return await provider.enqueue("ping")

    return run_sync(provider, send)


def test_sync_code_without_a_loop_sends_on_one_background_loop(provider: TaskProvider) -> None:
    loops: list[asyncio.AbstractEventLoop] = []
    _sender(provider, loops)
    other = threading.Thread(target=_sender, args=(provider, loops))
    other.start()
    other.join(10)
    assert len(loops) == 2
    assert loops[0] is loops[1], "each call got a loop of its own"
    assert loops[0].is_running()
    shutdown()
    assert loops[0].is_closed()
    _sender(provider, loops)  # a later call starts a new loop, and the provider reconnects
    assert loops[2] is not loops[0]


async def test_sync_code_under_an_asgi_loop_sends_on_that_loop(provider: TaskProvider) -> None:
    loops: list[asyncio.AbstractEventLoop] = []
    handle = await sync_to_async(_sender)(provider, loops)
    assert loops == [asyncio.get_running_loop()]
    assert (await provider.queue.counts()).ready == 1
    assert handle.task == "ping"
    await provider.disconnect()


async def test_a_blocking_send_from_async_code_says_what_to_do(provider: TaskProvider) -> None:
    async def never() -> None:
        raise AssertionError("not called")

    with pytest.raises(RuntimeError, match="sync_to_async"):
        run_sync(provider, never)
