"""RedisDeadLetterStorage: failure records in Redis (extra ``[redis]``).

Layout, under ``prefix`` (default ``lexigram:dlq``):

- ``{prefix}:r:{id}``: a hash per record: ``doc`` (the record's JSON) and
  the fields the filters use (``revision``, ``task``, ``queue``,
  ``error_type``, ``failed_at``);
- ``{prefix}:t``: a sorted set of every record id scored by failure time;
- ``{prefix}:t:task:{name}``, ``{prefix}:t:queue:{name}``,
  ``{prefix}:t:error:{type}``: the same, per task, queue and error type.

Writes and deletes are Lua scripts, so a record and its index entries
change together. A list reads the narrowest index by score range and checks
any other filter on the records it fetches.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis.asyncio as aioredis

from lexigram.tasks.dlq.filters import FailureFilter
from lexigram.tasks.dlq.record import FailureRecord
from lexigram.tasks.redis.connection import (
    SentinelAddress,
    hash_tagged,
    open_client,
    redact,
    resolve_url,
)

_PUT = """
local prefix, id = ARGV[1], ARGV[2]
local old = redis.call('HMGET', KEYS[1], 'task', 'queue', 'error_type')
if old[2] then
  if old[1] ~= '' then redis.call('ZREM', prefix .. ':t:task:' .. old[1], id) end
  redis.call('ZREM', prefix .. ':t:queue:' .. old[2], id)
  redis.call('ZREM', prefix .. ':t:error:' .. old[3], id)
end
redis.call('HSET', KEYS[1], 'doc', ARGV[3], 'revision', ARGV[4], 'task', ARGV[5],
           'queue', ARGV[6], 'error_type', ARGV[7], 'failed_at', ARGV[8])
redis.call('ZADD', prefix .. ':t', ARGV[8], id)
if ARGV[5] ~= '' then redis.call('ZADD', prefix .. ':t:task:' .. ARGV[5], ARGV[8], id) end
redis.call('ZADD', prefix .. ':t:queue:' .. ARGV[6], ARGV[8], id)
redis.call('ZADD', prefix .. ':t:error:' .. ARGV[7], ARGV[8], id)
return 1
"""

# Deletes a record if it exists and (when ARGV[3] is not empty) has that revision.
_DELETE = """
local prefix, id = ARGV[1], ARGV[2]
local cur = redis.call('HMGET', KEYS[1], 'revision', 'task', 'queue', 'error_type')
if not cur[1] then
  redis.call('ZREM', prefix .. ':t', id)
  return 0
end
if ARGV[3] ~= '' and cur[1] ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', prefix .. ':t', id)
if cur[2] ~= '' then redis.call('ZREM', prefix .. ':t:task:' .. cur[2], id) end
redis.call('ZREM', prefix .. ':t:queue:' .. cur[3], id)
redis.call('ZREM', prefix .. ':t:error:' .. cur[4], id)
return 1
"""

_CHUNK = 200


class RedisDeadLetterStorage:
    """Failure records in Redis: a hash per record plus sorted sets by failure time.

    ``redis_url`` may be ``rediss://`` for TLS, or ``redis+sentinel://`` (or
    ``sentinels=`` with ``service_name=``) for a master found through Redis
    Sentinel. Several applications can share a server by using different
    ``prefix`` es.
    """

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379/0",
        prefix: str = "lexigram:dlq",
        *,
        sentinels: Sequence[SentinelAddress] | None = None,
        service_name: str | None = None,
    ) -> None:
        if not prefix:
            raise ValueError("prefix must not be empty")
        redis_url = resolve_url(redis_url, sentinels, service_name)
        self.redis_url = redis_url
        self.prefix = hash_tagged(redis_url, prefix)
        self._client: aioredis.Redis | None = None
        self._put: Any = None
        self._delete: Any = None

    def __repr__(self) -> str:
        url = redact(self.redis_url)
        return f"RedisDeadLetterStorage(redis_url={url!r}, prefix={self.prefix!r})"

    # -- lifecycle -------------------------------------------------------------

    async def connect(self) -> None:
        if self._client is not None:
            return
        client = await open_client(
            self.redis_url, purpose="the dead letter queue", decode_responses=False
        )
        self._put = client.register_script(_PUT)
        self._delete = client.register_script(_DELETE)
        # purge() sends deletions in a pipeline, which loads no script on a
        # cluster: load it on every master now (one round trip elsewhere).
        await client.script_load(_DELETE)
        self._client = client

    async def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")
        return self._client

    # -- keys ------------------------------------------------------------------

    def record_key(self, record_id: str) -> str:
        return f"{self.prefix}:r:{record_id}"

    def _index(self, where: FailureFilter) -> tuple[str, FailureFilter]:
        """The narrowest index for ``where``, and the filters left to check on each record
        (the time range is the index's score range)."""
        if where.task is not None:
            return f"{self.prefix}:t:task:{where.task}", FailureFilter(
                queue=where.queue, error_type=where.error_type
            )
        if where.error_type is not None:
            return f"{self.prefix}:t:error:{where.error_type}", FailureFilter(queue=where.queue)
        if where.queue is not None:
            return f"{self.prefix}:t:queue:{where.queue}", FailureFilter()
        return f"{self.prefix}:t", FailureFilter()

    # -- records ---------------------------------------------------------------

    async def put(self, record: FailureRecord) -> None:
        await self._put(
            keys=[self.record_key(record.id)],
            args=[
                self.prefix,
                record.id,
                record.to_json(),
                record.revision,
                record.task or "",
                record.queue,
                record.error_type,
                repr(record.failed_at),
            ],
        )

    async def get(self, record_id: str) -> FailureRecord | None:
        doc = await self.client.hget(self.record_key(record_id), "doc")
        return FailureRecord.from_json(doc) if doc is not None else None

    async def list(
        self,
        where: FailureFilter,
        *,
        limit: int | None = 50,
        offset: int = 0,
        newest_first: bool = False,
    ) -> builtins.list[FailureRecord]:
        index, residual = self._index(where)
        if residual.is_empty:
            ids = await self._range(index, where, offset, limit, newest_first)
            return [r for r in await self._fetch(ids) if r is not None]
        found: builtins.list[FailureRecord] = []
        skipped = 0
        async for record in self._scan(index, where, residual, newest_first):
            if skipped < offset:
                skipped += 1
                continue
            if limit is not None and len(found) >= limit:
                break
            found.append(record)
        return found

    async def count(self, where: FailureFilter) -> int:
        index, residual = self._index(where)
        if residual.is_empty:
            low, high = _bounds(where)
            return int(await self.client.zcount(index, low, high))
        return sum([1 async for _ in self._scan(index, where, residual, False)])

    async def delete(self, record_id: str, revision: str | None = None) -> bool:
        removed = await self._delete(
            keys=[self.record_key(record_id)], args=[self.prefix, record_id, revision or ""]
        )
        return bool(removed)

    async def purge(self, where: FailureFilter) -> int:
        index, residual = self._index(where)
        if residual.is_empty:
            ids = await self._range(index, where, 0, None, False)
        else:
            ids = [r.id async for r in self._scan(index, where, residual, False)]
        removed = 0
        for start in range(0, len(ids), _CHUNK):
            async with self.client.pipeline(transaction=False) as pipe:
                for record_id in ids[start : start + _CHUNK]:
                    await self._delete(
                        keys=[self.record_key(record_id)],
                        args=[self.prefix, record_id, ""],
                        client=pipe,
                    )
                results = await pipe.execute()
            removed += sum(1 for r in results if r)
        return removed

    # -- helpers ---------------------------------------------------------------

    async def _range(
        self, index: str, where: FailureFilter, offset: int, limit: int | None, desc: bool
    ) -> builtins.list[str]:
        low, high = _bounds(where)
        start, end = (high, low) if desc else (low, high)
        raw = await self.client.zrange(
            index,
            start,
            end,
            byscore=True,
            desc=desc,
            offset=offset,
            num=-1 if limit is None else limit,
        )
        return [m.decode() if isinstance(m, bytes) else str(m) for m in raw]

    async def _fetch(self, ids: builtins.list[str]) -> builtins.list[FailureRecord | None]:
        if not ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for record_id in ids:
                pipe.hget(self.record_key(record_id), "doc")
            docs = await pipe.execute()
        return [FailureRecord.from_json(d) if d is not None else None for d in docs]

    async def _scan(
        self, index: str, where: FailureFilter, residual: FailureFilter, desc: bool
    ) -> AsyncIterator[FailureRecord]:
        """Records of ``index`` in the time range that also match ``residual``."""
        position = 0
        while True:
            ids = await self._range(index, where, position, _CHUNK, desc)
            if not ids:
                return
            position += len(ids)
            for record in await self._fetch(ids):
                if record is not None and residual.matches(record):
                    yield record


def _bounds(where: FailureFilter) -> tuple[str, str]:
    low = "-inf" if where.since is None else repr(where.since)
    high = "+inf" if where.until is None else f"({where.until!r}"
    return low, high
