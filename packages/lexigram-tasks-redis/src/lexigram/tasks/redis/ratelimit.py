"""RedisRateLimiter: one rate limit shared by every worker process, kept in Redis.

It runs GCRA (the "generic cell rate algorithm": a token bucket stored as a
single timestamp) in one Lua script, on the server's clock, so any number of
processes on any number of hosts draw from the same budget atomically.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from lexigram.tasks.ratelimit import Rate
from lexigram.tasks.redis._connection import open_client, reported, resolve_url
from lexigram.tasks.redis._sentinel import SentinelAddress, redact
from redis.asyncio import Redis

# KEYS[1]: the limit's state (its "theoretical arrival time"); ARGV: interval, burst.
# Returns the seconds to wait as a string (Lua numbers become integer replies).
_GCRA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
-- How far the schedule already runs ahead of now. Work with this difference,
-- never with absolute times alone: at today's epoch a double resolves only
-- about 0.2 us, and (now + interval) - now - interval is not exactly 0.
local ahead = math.max((tonumber(redis.call('GET', KEYS[1]) or '0')) - now, 0)
local wait = ahead + interval - interval * burst
if wait > 0.000001 then return tostring(wait) end
redis.call('SET', KEYS[1], string.format('%.6f', now + ahead + interval),
  'PX', math.ceil((ahead + interval) * 1000) + 1000)
return '0'
"""


class RedisRateLimiter:
    """A :class:`~lexigram.tasks.ratelimit.RateLimiter` whose budget lives in Redis.

    Give the same instance settings (URL and ``namespace``) to every worker
    process of a deployment: ``rate_limit="100/s"`` on a task then means 100
    per second in total, however many processes run it. ``burst`` executions
    may start back to back before the pace applies. It connects on first use;
    ``await limiter.disconnect()`` closes it.
    """

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379/0",
        *,
        sentinels: Sequence[SentinelAddress] | None = None,
        service_name: str | None = None,
        namespace: str = "lexigram",
        burst: int = 1,
        client: Redis | None = None,
    ) -> None:
        redis_url = resolve_url(redis_url, sentinels, service_name)
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.redis_url = redis_url
        self.namespace = namespace
        self.burst = burst
        self._client = client
        self._owns_client = client is None
        self._connecting = asyncio.Lock()
        self._script: Any = None

    def __repr__(self) -> str:
        return (
            f"RedisRateLimiter(redis_url={redact(self.redis_url)!r}, "
            f"namespace={self.namespace!r}, burst={self.burst})"
        )

    def key(self, name: str) -> str:
        """The Redis key holding the state of limit ``name``."""
        return f"{self.namespace}:rate:{name}"

    async def connect(self) -> None:
        async with self._connecting:
            if self._client is None:
                self._client = await open_client(self.redis_url)
                self._owns_client = True
            if self._script is None:
                self._script = self._client.register_script(_GCRA)

    async def disconnect(self) -> None:
        client, self._client = self._client, None
        self._script = None
        if client is not None and self._owns_client:
            await client.aclose()

    async def acquire(self, key: str, rate: Rate) -> float:
        """Take a slot under ``key`` and return 0, or return the seconds to wait first."""
        if self._script is None:
            await self.connect()
        with reported(self.redis_url):
            wait = await self._script(keys=[self.key(key)], args=[repr(rate.interval), self.burst])
        return float(wait)
