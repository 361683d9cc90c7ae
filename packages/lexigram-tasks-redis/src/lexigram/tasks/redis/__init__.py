"""Redis backend for lexigram-tasks.

``RedisTaskQueue`` keeps jobs in rq's key layout (so ``rq info`` and rq's
registries show them), ``CacheBackendResultStore`` keeps job results with a
TTL, and ``RedisRateLimiter`` enforces rate limits shared by every worker
process of a deployment. Each takes a ``redis+sentinel://`` URL (see
:func:`sentinel_url`) to follow a master through Sentinel failovers, or a
``redis+cluster://`` URL for a Redis Cluster (``RedisTaskQueue(...,
shards=N)`` spreads a queue over N of its slots).
"""

from __future__ import annotations

from lexigram.tasks.redis._connection import validate_url
from lexigram.tasks.redis._sentinel import sentinel_url
from lexigram.tasks.redis._version import __version__
from lexigram.tasks.redis.queue import RedisTaskQueue
from lexigram.tasks.redis.ratelimit import RedisRateLimiter
from lexigram.tasks.redis.results import CacheBackendResultStore

__all__ = [
    "CacheBackendResultStore",
    "RedisRateLimiter",
    "RedisTaskQueue",
    "__version__",
    "sentinel_url",
    "validate_url",
]
