"""RedisConcurrencyLimiter: lease-based semaphores shared by every worker process, in Redis.

Each semaphore is a sorted set of holders scored by when their lease lapses,
on the server's clock. One Lua script takes (all or none of) a job's slots:
it drops the lapsed holders, counts the rest against the limit and adds the
holder. The acquires and releases that the worker's slots ask for within one
turn of the event loop go to Redis together, in one script call. The limiter
of a queue (:meth:`RedisConcurrencyLimiter.for_queue`) sends its releases in
the same write as the queue's next ack or nack, when one goes first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from lexigram.tasks.concurrency import Limit
from lexigram.tasks.redis._cluster import ClusterScript, hash_tagged, is_cluster
from lexigram.tasks.redis._connection import open_client, reported, resolve_url
from lexigram.tasks.redis._scripts import HeldConnection, PreparedScript, Script, pool_sized_in
from lexigram.tasks.redis._sentinel import SentinelAddress, redact
from redis.asyncio import Redis

logger = logging.getLogger("lexigram.tasks.redis")

# ARGV[1]: the key prefix; ARGV[2]: the releases, a line each: holder, then the names;
# ARGV[3]: the acquires, a line each: holder, lease seconds, then name and limit pairs.
# Fields are tab-separated. Returns a string of '1' (taken) or '0', one per acquire.
# (One string per list, not an argument per field: encoding every field as its own
# argument costs the client more than the whole script costs the server.)
# A set is cleaned of lapsed holders only when it looks full: below the limit the
# lapsed ones cannot matter, and a fresh key (the usual per-key case) costs a ZCARD.
# Every number a command takes is text, formatted once per call (a number passed to
# redis.call is formatted with sprintf, which costs about as much as a small command);
# a call that only releases does not read the clock.
_BATCH = r"""
local prefix = ARGV[1]
local call, match, tonumber = redis.call, string.match, tonumber
local function fields(line)
  local out = {}
  for field in string.gmatch(line, '[^\t]+') do out[#out + 1] = field end
  return out
end
for line in string.gmatch(ARGV[2], '[^\n]+') do
  local holder, name = match(line, '^([^\t]+)\t([^\t]+)$')
  if holder then
    call('ZREM', prefix .. name, holder)
  else
    local f = fields(line)
    for i = 2, #f do call('ZREM', prefix .. f[i], f[1]) end
  end
end
if ARGV[3] == '' then return '' end
local clock = call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local now_text
-- The last limit and lease seen, as sent and converted (a batch's acquires share them).
local limit_text, limit, lease_text, until_text, ms_text
local function room(key, holder, asked)
  if asked ~= limit_text then limit_text, limit = asked, tonumber(asked) end
  local size = call('ZCARD', key)
  if size < limit then return size end
  if not now_text then now_text = string.format('%.17g', now) end
  call('ZREMRANGEBYSCORE', key, '-inf', now_text)
  size = call('ZCARD', key)
  if size < limit or call('ZSCORE', key, holder) then return size end
  return false
end
local function hold(key, holder, lease, size)
  if lease ~= lease_text then
    local seconds = tonumber(lease)
    -- The set outlives its longest lease by a second (GT: never shortened).
    lease_text, until_text, ms_text = lease, string.format('%.17g', now + seconds),
      string.format('%d', math.ceil(seconds * 1000) + 1000)
  end
  call('ZADD', key, until_text, holder)
  if size == 0 then call('PEXPIRE', key, ms_text) else call('PEXPIRE', key, ms_text, 'GT') end
end
local taken = {}
for line in string.gmatch(ARGV[3], '[^\n]+') do
  local holder, lease, name, limit = match(line, '^([^\t]+)\t([^\t]+)\t([^\t]+)\t([^\t]+)$')
  local fits = '0'
  if holder then
    local key = prefix .. name
    local size = room(key, holder, limit)
    if size then
      hold(key, holder, lease, size)
      fits = '1'
    end
  else
    local f = fields(line)
    holder, lease = f[1], f[2]
    local sizes = {}
    fits = '1'
    for i = 3, #f, 2 do
      sizes[i] = room(prefix .. f[i], holder, f[i + 1])
      if not sizes[i] then fits = '0'; break end
    end
    if fits == '1' then
      for i = 3, #f, 2 do hold(prefix .. f[i], holder, lease, sizes[i]) end
    end
  end
  taken[#taken + 1] = fits
end
return table.concat(taken)
"""

_BATCH_SCRIPT = Script.of("concurrency_batch", _BATCH)

# KEYS: semaphores; ARGV: lease seconds, then the holder of each key.
_EXTEND = """
local clock = redis.call('TIME')
local until_ = tonumber(clock[1]) + tonumber(clock[2]) / 1000000 + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if redis.call('ZADD', key, 'XX', 'CH', until_, ARGV[i + 1]) == 1 then
    redis.call('PEXPIREAT', key, math.ceil(until_ * 1000) + 1000, 'GT')
  end
end
return 0
"""

_Acquire = tuple[Sequence[Limit], str, float, "asyncio.Future[bool]"]

#: Seconds a release waits before it is sent: the releases of the jobs that end meanwhile
#: and the acquires of the next fetched batch go with it, in the same script call.
RELEASE_DELAY = 0.005


class RedisConcurrencyLimiter:
    """A :class:`~lexigram.tasks.concurrency.ConcurrencyLimiter` whose slots live in Redis.

    A Redis backend gets one on its own connection without configuration; set
    it as ``concurrency_limiter`` (``type: redis``) for a backend that keeps
    no semaphores (RabbitMQ). Every worker process of a deployment must use
    the same server and ``namespace``. A release is sent with the next ack or
    nack of the queue the limiter was made for, or with the next acquires, at
    most :data:`RELEASE_DELAY` later; if it fails, the slot's lease lapses.
    """

    shared = True

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379/0",
        *,
        sentinels: Sequence[SentinelAddress] | None = None,
        service_name: str | None = None,
        namespace: str = "lexigram",
        client: Redis | None = None,
    ) -> None:
        redis_url = resolve_url(redis_url, sentinels, service_name)
        self.redis_url = redis_url
        self.namespace = hash_tagged(redis_url, namespace)
        self._prefix = self.key("")
        self._client = client
        self._owns_client = client is None
        self._connecting = asyncio.Lock()
        # The batch call, its key and prefix packed once: redis-py's per-command
        # machinery cost the worker more CPU than everything else a batch does.
        self._batch: PreparedScript | None = None
        self._extend: Any = None
        self._acquires: list[_Acquire] = []
        self._releases: list[tuple[Sequence[str], str]] = []
        self._planned = False
        self._timer: asyncio.TimerHandle | None = None  # a flush planned for the releases
        self._flushing: set[asyncio.Task[None]] = set()
        self._closed = False
        self._carrier: Any = None  # the queue whose acks carry the releases
        # The connection the batch calls go out on when it is free (a queue's, shared).
        self._held: HeldConnection | None = None

    def __repr__(self) -> str:
        return (
            f"RedisConcurrencyLimiter(redis_url={redact(self.redis_url)!r}, "
            f"namespace={self.namespace!r})"
        )

    @classmethod
    def for_queue(cls, queue: Any) -> RedisConcurrencyLimiter:
        """The limiter on a connected :class:`~lexigram.tasks.redis.RedisTaskQueue`'s client,
        whose releases go with the queue's acks and nacks."""
        client = queue.client
        limiter = cls(queue.redis_url, client=client)
        carry = getattr(queue, "carry_releases", None)
        if carry is not None:
            carry(limiter)
            limiter._carrier = queue
        # The acquires go out on the connection the queue's leases and acks use, when it
        # is free (it is, right after the lease that fetched the batch): no pool lock,
        # hooks and liveness check per call. None when the queue holds none (a pool
        # sized by the user, a client given to the queue, a cluster).
        held = getattr(queue, "_held_connection", None)
        if held is not None and not is_cluster(client):
            limiter._held = held(client)
        return limiter

    def take_with_leases(self, queue: Any, holder_prefix: str) -> bool:
        """Have ``queue``'s leases take the slots named in their jobs' ``lexigram-slots``
        header, for holder ``holder_prefix + job id``, when this is the queue's own
        limiter (:meth:`for_queue`): a round trip less per leased batch. False if not."""
        take = getattr(queue, "take_slots_on_lease", None)
        if self._carrier is not queue or take is None:
            return False
        return bool(take(self._prefix, holder_prefix))

    def key(self, name: str) -> str:
        """The Redis key of semaphore ``name``."""
        return f"{self.namespace}:slots:{name}"

    async def connect(self) -> None:
        self._closed = False
        async with self._connecting:
            if self._client is None:
                self._client = await open_client(self.redis_url)
                self._owns_client = True
            if self._batch is None:
                client, keys = self._client, [self._prefix]
                if is_cluster(client):
                    self._batch = ClusterScript(client, _BATCH_SCRIPT, keys, keys)
                else:
                    sized = pool_sized_in(self.redis_url)
                    if self._held is None and self._owns_client and not sized:
                        self._held = HeldConnection(client)  # a pool of its own, not sized
                    self._batch = PreparedScript(client, _BATCH_SCRIPT, keys, keys, self._held)
                self._extend = client.register_script(_EXTEND)

    async def disconnect(self) -> None:
        """Send the releases still pending, then close the client if this limiter opened it."""
        if self._releases or self._acquires:
            self._plan()
        while self._flushing or self._planned:
            if self._flushing:
                await asyncio.gather(*self._flushing, return_exceptions=True)
            else:
                await asyncio.sleep(0)
        self._closed = True
        if self._carrier is not None:
            self._carrier.stop_carrying(self)
            stop_taking = getattr(self._carrier, "stop_taking_slots", None)
            if stop_taking is not None:
                stop_taking()
            self._carrier = None
        client, self._client = self._client, None
        self._batch = self._extend = None
        held, self._held = self._held, None
        if held is not None and self._owns_client:
            await held.release()  # a queue's own is the queue's to give back
        if client is not None and self._owns_client:
            await client.aclose()

    async def acquire(self, limits: Sequence[Limit], holder: str, lease_seconds: float) -> bool:
        """Take a slot of every limit for ``holder``, or none; True if taken."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._acquires.append((limits, holder, lease_seconds, future))
        self._plan()
        return await future

    async def acquire_many(
        self, requests: Sequence[tuple[Sequence[Limit], str]], lease_seconds: float
    ) -> list[bool]:
        """Every request in one script call (with the acquires and releases pending)."""
        return await self._flush(requests, lease_seconds)

    async def release(self, names: Sequence[str], holder: str) -> None:
        """Queue the release of ``holder``'s slots for the next batch (within
        :data:`RELEASE_DELAY` seconds, sooner with an acquire)."""
        self.release_nowait(names, holder)

    def release_nowait(self, names: Sequence[str], holder: str) -> None:
        """:meth:`release` without a coroutine (the worker's per-job path)."""
        self._releases.append((names, holder))
        if self._timer is None and not self._planned:
            self._timer = asyncio.get_running_loop().call_later(RELEASE_DELAY, self._timed_flush)

    def take_releases(self, client: Any) -> tuple[list[tuple[Sequence[str], str]], bytes] | None:
        """The queued releases and their script call, packed, for a call on ``client`` to
        carry in the same write (the queue's ack); None if there are none, or if this
        limiter's calls go to another client. The caller sends them, or gives them back
        with :meth:`put_back`."""
        batch = self._batch
        if (
            not self._releases
            or batch is None
            or batch.client is not client
            or batch.__class__ is not PreparedScript
        ):
            return None
        releases, self._releases = self._releases, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return releases, batch.pack([_released(releases), ""])

    def put_back(self, releases: list[tuple[Sequence[str], str]]) -> None:
        """Releases taken with :meth:`take_releases` and not sent: they go with this
        limiter's next call."""
        self._releases[:0] = releases
        if self._timer is None and not self._planned:
            self._timer = asyncio.get_running_loop().call_later(RELEASE_DELAY, self._timed_flush)

    async def flush(self) -> None:
        """Send the queued releases (and acquires) now, instead of on the next loop turn."""
        await self._flush((), 0.0)

    async def extend(self, held: Sequence[tuple[str, str]], lease_seconds: float) -> None:
        if not held:
            return
        if self._extend is None:
            await self.connect()
        # Named and held as the batch script wrote them (escaped).
        keys = [self.key(_field(name)) for name, _ in held]
        holders = [_field(holder) for _, holder in held]
        with reported(self.redis_url):
            await self._extend(keys=keys, args=[repr(lease_seconds), *holders])

    def _plan(self) -> None:
        """Flush on the next loop turn."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._planned:
            self._planned = True
            asyncio.get_running_loop().call_soon(self._start_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        if self._releases and not self._planned:
            self._planned = True
            self._start_flush()

    def _start_flush(self) -> None:
        self._planned = False
        task = asyncio.get_running_loop().create_task(self._flush_pending())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _flush_pending(self) -> None:
        await self._flush((), 0.0)

    async def _flush(
        self, requests: Sequence[tuple[Sequence[Limit], str]], lease_seconds: float
    ) -> list[bool]:
        """Send the pending acquires and releases with ``requests``; the answers to ``requests``."""
        if self._timer is not None:  # the releases go now
            self._timer.cancel()
            self._timer = None
        acquires, self._acquires = self._acquires, []
        releases, self._releases = self._releases, []
        if not acquires and not releases and not requests:
            return []
        freed = _released(releases)
        asked = [_asked([(limits, holder)], repr(lease)) for limits, holder, lease, _ in acquires]
        if requests:
            asked.append(_asked(requests, repr(lease_seconds)))
        if self._batch is None and self._closed and not acquires and not requests:
            # Released after disconnect() (a job that ended during shutdown):
            # reconnecting here would open a client nobody closes; the slots
            # free themselves when their lease lapses.
            logger.debug("%d release(s) after disconnect left to their lease", len(releases))
            return []
        try:
            if self._batch is None:
                await self.connect()
            assert self._batch is not None
            with reported(self.redis_url):
                taken = await self._batch([freed, "\n".join(asked)])
        except Exception as exc:
            if releases:
                logger.warning(
                    "releasing %d set(s) of concurrency slots failed: %s", len(releases), exc
                )
            for *_, future in acquires:
                if not future.done():
                    future.set_exception(exc)
            if requests:
                raise
            return []
        if isinstance(taken, str):  # a client made with decode_responses=True
            taken = taken.encode()
        for (*_, future), fits in zip(acquires, taken, strict=False):
            if not future.done():
                future.set_result(fits == 49)  # b"1"
        return [fits == 49 for fits in taken[len(acquires) :]]


def _asked(requests: Sequence[tuple[Sequence[Limit], str]], lease: str) -> str:
    """The acquires' lines of a batch: holder, lease, then name and limit pairs."""
    lines = []
    tabs = 0
    for limits, holder in requests:
        if len(limits) == 1:
            name, limit = limits[0]
            lines.append(f"{holder}\t{lease}\t{name}\t{limit}")
        else:
            pairs = "\t".join(f"{name}\t{limit}" for name, limit in limits)
            lines.append(f"{holder}\t{lease}\t{pairs}")
        tabs += 1 + 2 * len(limits)
    text = "\n".join(lines)
    if _plain(text, tabs, len(lines)):
        return text
    return "\n".join(
        "\t".join([_field(holder), lease, *(f"{_field(name)}\t{limit}" for name, limit in limits)])
        for limits, holder in requests
    )


def _released(releases: Sequence[tuple[Sequence[str], str]]) -> str:
    """The releases' lines of a batch: holder, then the names."""
    lines = []
    tabs = 0
    for names, holder in releases:
        if len(names) == 1:
            lines.append(f"{holder}\t{names[0]}")
        else:
            lines.append("\t".join([holder, *names]))
        tabs += len(names)
    text = "\n".join(lines)
    if _plain(text, tabs, len(lines)):
        return text
    return "\n".join(
        "\t".join([_field(holder), *(_field(name) for name in names)]) for names, holder in releases
    )


def _plain(text: str, tabs: int, lines: int) -> bool:
    """Whether no field of ``text`` holds a separator or ``%`` (none to escape).

    Counted on the joined text: one scan each instead of a check per field.
    """
    return (
        "%" not in text
        and text.count("\t") == tabs
        and (lines == 0 or text.count("\n") == lines - 1)
    )


def _field(name: str) -> str:
    """``name`` with the batch's separators (and ``%``) percent-escaped."""
    if "\t" in name or "\n" in name or "%" in name:
        return name.replace("%", "%25").replace("\t", "%09").replace("\n", "%0A")
    return name
