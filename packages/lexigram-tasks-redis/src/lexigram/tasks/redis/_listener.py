"""One pub/sub connection for many waiters, driven by a single task.

redis-py's ``PubSub`` must not be used by two coroutines at once: when its
connection drops, a SUBSCRIBE sent while another coroutine reads would
reconnect concurrently and hang. So only the listener task touches the
``PubSub``: callers queue subscription changes, and the task applies them
between short reads. The task exits when nothing is subscribed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable

from lexigram.tasks.redis._sentinel import tidy
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

logger = logging.getLogger("lexigram.tasks.redis")

# How long one read waits before queued subscription changes are applied.
_READ_SLICE = 0.05


class ChannelListener:
    """Calls ``on_message(channel, data)`` for messages on the channels subscribed to."""

    def __init__(self, client: Redis, on_message: Callable[[bytes, bytes], None]) -> None:
        self._client = client
        self._on_message = on_message
        self._requests: collections.deque[tuple[str, str, asyncio.Future[None] | None]] = (
            collections.deque()
        )
        self._wanted: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def subscribe(self, channel: str) -> None:
        """Return once messages on ``channel`` are being received."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wanted.add(channel)
        self._requests.append(("subscribe", channel, done))
        self._ensure_running()
        await done

    def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel`` (applied by the listener task shortly)."""
        self._wanted.discard(channel)
        self._requests.append(("unsubscribe", channel, None))
        self._ensure_running()

    async def close(self) -> None:
        task, self._task = self._task, None
        self._wanted.clear()
        for _, _, done in self._requests:
            if done is not None and not done.done():
                done.cancel()
        self._requests.clear()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _ensure_running(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lexigram-result-listener")

    async def _run(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            while self._requests or self._wanted:
                await self._apply_requests(pubsub)
                if not pubsub.subscribed:
                    await asyncio.sleep(_READ_SLICE)
                    continue
                try:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_READ_SLICE
                    )
                except (RedisError, OSError) as exc:
                    # The next call reconnects and resubscribes; waiters re-read
                    # their keys meanwhile, so a message lost now only delays them.
                    logger.warning(
                        "result notifications interrupted (%s); reconnecting", tidy(str(exc))
                    )
                    await asyncio.sleep(0.1)
                    continue
                if message is not None and message.get("type") == "message":
                    self._on_message(message["channel"], message["data"])
        finally:
            if self._task is asyncio.current_task():
                self._task = None  # before awaiting, so a new subscribe starts a new task
            await pubsub.aclose()

    async def _apply_requests(self, pubsub: PubSub) -> None:
        while self._requests:
            operation, channel, done = self._requests.popleft()
            try:
                if operation == "subscribe":
                    await pubsub.subscribe(channel)
                elif channel not in self._wanted:
                    await pubsub.unsubscribe(channel)
            except (RedisError, OSError) as exc:
                if done is not None and not done.done():
                    self._wanted.discard(channel)
                    done.set_exception(exc)
                continue
            if done is not None and not done.done():
                done.set_result(None)
