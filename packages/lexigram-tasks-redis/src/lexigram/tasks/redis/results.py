"""CacheBackendResultStore: job results in Redis, with a TTL and push notification.

A result is one string key (``lexigram:result:<job id>``, JSON, expiring
after the TTL). Storing it also PUBLISHes it, and every waiting handle of a
process shares one pub/sub connection, so ``await handle.result()`` wakes
as soon as the result lands, without polling. A waiter re-reads the key
every ``recheck_interval`` seconds as well, in case a notification was lost
while the pub/sub connection was being re-established.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from lexigram.tasks.errors import JobSerializationError, MalformedJobError, ResultTimeoutError
from lexigram.tasks.redis._cluster import is_cluster
from lexigram.tasks.redis._connection import open_client, reported, resolve_url
from lexigram.tasks.redis._listener import ChannelListener
from lexigram.tasks.redis._sentinel import SentinelAddress, redact
from lexigram.tasks.results import JobResult
from redis.asyncio import Redis

#: Results bigger than this (bytes of JSON) are refused by default.
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024


class CacheBackendResultStore:
    """A :class:`~lexigram.tasks.results.ResultStore` backed by Redis.

    ``ttl`` is how long a result is kept (seconds) when the worker does not
    say otherwise. Results whose JSON exceeds ``max_result_bytes`` are
    refused with :class:`~lexigram.tasks.errors.JobSerializationError`, as
    are values JSON cannot represent; the worker then stores a failure
    naming the problem, so the waiting caller learns what went wrong.
    """

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379/0",
        *,
        sentinels: Sequence[SentinelAddress] | None = None,
        service_name: str | None = None,
        ttl: float = 3600.0,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        key_prefix: str = "lexigram:result:",
        recheck_interval: float = 5.0,
        client: Redis | None = None,
    ) -> None:
        redis_url = resolve_url(redis_url, sentinels, service_name)
        if ttl <= 0 or recheck_interval <= 0:
            raise ValueError("ttl and recheck_interval must be > 0")
        self.redis_url = redis_url
        self.ttl = ttl
        self.max_result_bytes = max_result_bytes
        self.key_prefix = key_prefix
        self.recheck_interval = recheck_interval
        self._client = client
        self._owns_client = client is None
        self._listener: ChannelListener | None = None
        self._waiters: dict[str, list[asyncio.Future[JobResult]]] = {}

    def __repr__(self) -> str:
        return f"CacheBackendResultStore(redis_url={redact(self.redis_url)!r}, ttl={self.ttl})"

    def key(self, job_id: str) -> str:
        """The key (and pub/sub channel) of ``job_id``'s result."""
        return self.key_prefix + job_id

    async def connect(self) -> None:
        if self._client is None:
            self._client = await open_client(self.redis_url)
            self._owns_client = True

    async def disconnect(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.cancel()
        self._waiters.clear()
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.aclose()

    @property
    def client(self) -> Redis:
        if self._client is None:
            raise RuntimeError(f"{self!r} is not connected: call 'await store.connect()' first")
        return self._client

    async def set(self, job_id: str, result: JobResult, ttl: float | None = None) -> None:
        data = result.to_json().encode()
        if len(data) > self.max_result_bytes:
            raise JobSerializationError(
                f"result of job {job_id} is {len(data)} bytes of JSON, more than "
                f"max_result_bytes={self.max_result_bytes}; store large data elsewhere "
                "and return a reference to it"
            )
        ttl_ms = max(1, round((self.ttl if ttl is None else ttl) * 1000))
        key = self.key(job_id)
        with reported(self.redis_url):
            if is_cluster(self.client):  # a cluster's pipelines refuse PUBLISH
                await self.client.set(key, data, px=ttl_ms)
                await self.client.publish(key, data)
                return
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(key, data, px=ttl_ms)
                pipe.publish(key, data)
                await pipe.execute()

    async def get(self, job_id: str) -> JobResult | None:
        with reported(self.redis_url):
            data = await self.client.get(self.key(job_id))
        return None if data is None else _decode(job_id, data)

    async def wait(self, job_id: str, timeout: float | None = None) -> JobResult:
        result = await self.get(job_id)
        if result is not None:
            return result
        waiter: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(job_id, [])
        waiters.append(waiter)
        try:
            if len(waiters) == 1:
                await self._notifications().subscribe(self.key(job_id))
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                # Read after subscribing, so a result stored in between is not missed.
                result = await self.get(job_id)
                if result is not None:
                    return result
                slice_ = self.recheck_interval
                if deadline is not None:
                    slice_ = min(slice_, deadline - time.monotonic())
                    if slice_ <= 0:
                        raise ResultTimeoutError(
                            f"no result for job {job_id} within {timeout} seconds"
                        )
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(waiter), slice_)
        finally:
            self._forget(job_id, waiter)

    def _notifications(self) -> ChannelListener:
        if self._listener is None:
            self._listener = ChannelListener(self.client, self._on_message)
        return self._listener

    def _forget(self, job_id: str, waiter: asyncio.Future[JobResult]) -> None:
        waiters = self._waiters.get(job_id)
        if waiters is None or waiter not in waiters:
            return
        waiters.remove(waiter)
        if not waiters:
            del self._waiters[job_id]
            if self._listener is not None:
                self._listener.unsubscribe(self.key(job_id))

    def _on_message(self, channel: bytes, data: bytes) -> None:
        job_id = channel.decode()[len(self.key_prefix) :]
        waiters = self._waiters.get(job_id, ())
        if not waiters:
            return
        try:
            result = _decode(job_id, data)
        except MalformedJobError:
            return  # the waiter's own read reports it
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(result)


def _decode(job_id: str, data: Any) -> JobResult:
    try:
        return JobResult.from_json(data)
    except (ValueError, TypeError) as exc:
        raise MalformedJobError(f"the stored result of job {job_id} is not valid: {exc}") from exc
