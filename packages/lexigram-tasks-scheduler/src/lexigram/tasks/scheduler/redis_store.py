"""RedisTemplateStore: scheduler state in Redis.

Install with ``pip install lexigram-tasks-scheduler[redis]``.

Three keys under ``prefix``: ``templates`` (hash name -> JSON definition of
runtime templates), ``cursor`` (hash name -> last fire time) and ``paused``
(set of names). ``claim`` is a Lua script, so the read-compare-advance of a
cursor is one atomic step on the server.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lexigram.tasks.optional import import_optional
from lexigram.tasks.scheduler.errors import TemplateExistsError
from lexigram.tasks.scheduler.store import StoreSnapshot, TemplateState
from lexigram.tasks.scheduler.template import ScheduleTemplate

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from lexigram.tasks.redis.connection import SentinelAddress

# KEYS: cursor hash. ARGV: name, fire time. Returns the old cursor, or nil if not behind.
_CLAIM = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old or tonumber(old) >= tonumber(ARGV[2]) then return false end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return old
"""

# KEYS: cursor hash. ARGV: name, fire time (as claimed), previous cursor.
_RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
return 1
"""

# KEYS: templates hash, cursor hash, paused set. ARGV: name, definition, now.
_ADD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""

# KEYS: cursor hash, paused set. ARGV: name, paused (0/1), now.
_SET_PAUSED = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
  redis.call('SADD', KEYS[2], ARGV[1])
  if not old then redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
else
  redis.call('SREM', KEYS[2], ARGV[1])
  if not old or tonumber(old) < tonumber(ARGV[3]) then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  end
end
return 1
"""


#: What the connection is for, in connection error messages.
_PURPOSE = "the scheduler store"


def _number(value: float) -> str:
    return repr(float(value))


class RedisTemplateStore:
    """Scheduler state shared through Redis; every scheduler using the same
    ``redis_url`` and ``prefix`` fires each tick once. ``redis_url`` may be a
    ``redis+sentinel://`` URL, or ``sentinels=`` with ``service_name=`` may name
    the sentinels (``redis_url`` then gives the credentials and database)."""

    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str = "lexigram:scheduler",
        sentinels: Sequence[SentinelAddress] | None = None,
        service_name: str | None = None,
    ) -> None:
        import_optional(
            "lexigram.tasks.redis",
            "lexigram-tasks-scheduler",
            extra="redis",
            feature="RedisTemplateStore",
        )
        # installed: checked just above
        from lexigram.tasks.redis.connection import resolve_url

        self.redis_url = resolve_url(redis_url, sentinels, service_name)
        self.prefix = prefix
        self._keys = {part: f"{prefix}:{part}" for part in ("templates", "cursor", "paused")}
        self._client: Redis | None = None
        self._scripts: dict[str, Any] = {}

    def __repr__(self) -> str:
        from lexigram.tasks.redis.connection import redact

        return f"RedisTemplateStore({redact(self.redis_url)!r}, prefix={self.prefix!r})"

    async def connect(self) -> None:
        if self._client is not None:
            return
        from lexigram.tasks.redis.connection import open_client

        client = await open_client(self.redis_url, purpose=_PURPOSE, decode_responses=True)
        self._client = client
        self._scripts = {
            name: client.register_script(source)
            for name, source in (
                ("claim", _CLAIM),
                ("release", _RELEASE),
                ("add", _ADD),
                ("set_paused", _SET_PAUSED),
            )
        }

    async def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> Redis:
        if self._client is None:
            raise RuntimeError("RedisTemplateStore is not connected: await store.connect() first")
        return self._client

    async def load(self) -> StoreSnapshot:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._keys["templates"])
            pipe.hgetall(self._keys["cursor"])
            pipe.smembers(self._keys["paused"])
            templates, cursors, paused = await pipe.execute()
        states = {
            name: TemplateState(float(value), name in paused) for name, value in cursors.items()
        }
        return StoreSnapshot({n: json.loads(doc) for n, doc in templates.items()}, states)

    async def init_cursor(self, name: str, now: float) -> float:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hsetnx(self._keys["cursor"], name, _number(now))
            pipe.hget(self._keys["cursor"], name)
            _, value = await pipe.execute()
        return float(value)

    async def claim(self, name: str, fire_time: float) -> float | None:
        old = await self._scripts["claim"](
            keys=[self._keys["cursor"]], args=[name, _number(fire_time)]
        )
        return None if old is None else float(old)

    async def release(self, name: str, fire_time: float, previous: float) -> None:
        await self._scripts["release"](
            keys=[self._keys["cursor"]], args=[name, _number(fire_time), _number(previous)]
        )

    async def add_template(self, template: ScheduleTemplate, now: float) -> None:
        added = await self._scripts["add"](
            keys=[self._keys["templates"], self._keys["cursor"], self._keys["paused"]],
            args=[template.name, json.dumps(template.to_dict()), _number(now)],
        )
        if not added:
            raise TemplateExistsError(f"a runtime schedule named {template.name!r} already exists")

    async def remove_template(self, name: str) -> bool:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self._keys["templates"], name)
            pipe.hdel(self._keys["cursor"], name)
            pipe.srem(self._keys["paused"], name)
            removed, _, _ = await pipe.execute()
        return bool(removed)

    async def set_paused(self, name: str, paused: bool, now: float) -> None:
        await self._scripts["set_paused"](
            keys=[self._keys["cursor"], self._keys["paused"]],
            args=[name, "1" if paused else "0", _number(now)],
        )

    async def delete_all(self) -> None:
        """Remove every key of this store (for tests and teardown)."""
        await self.client.delete(*self._keys.values())
