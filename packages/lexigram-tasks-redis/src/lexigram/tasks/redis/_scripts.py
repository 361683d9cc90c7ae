"""The Lua scripts behind RedisTaskQueue, run by SHA (EVALSHA) and loaded on demand.

Each script is ``lua/common.lua`` followed by its own file, so every
operation on a queue is one atomic server-side call and one round trip.
Of common.lua's definitions a script gets only those it uses, directly or
through another: Redis runs the whole script text on every call, so each
function defined is a closure built and collected per call, and the clock
paragraph is a TIME call.
A queue calls them through :class:`PreparedScript`.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs, urlsplit

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError

_NAMES = (
    "enqueue",
    "lease",
    "ack",
    "nack",
    "extend",
    "counts",
    "dead_letters",
    "cancel",
    "progress",
    "list",
)


#: The queue keys a script may use, in the order of ``QueueKeys.as_list()``.
KEY_NAMES = (
    "K_READY",
    "K_SCHEDULED",
    "K_LEASES",
    "K_STARTED",
    "K_PRIO",
    "K_WAKE",
    "K_DEDUP",
    "K_FINISHED",
    "K_FAILED",
    "K_QUEUES",
    "K_SEQ",
    "K_CANCELED",
)
_KEY_LINE = re.compile(r"^local (K_\w+(?:, K_\w+)*) = KEYS\[1\]", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str
    #: Which of a queue's keys the script takes, as indexes into ``KEY_NAMES``
    #: (read from the line of the source naming them); ``None``: the keys
    #: are passed as given.
    key_slots: tuple[int, ...] | None = field(init=False)

    def __post_init__(self) -> None:
        line = _KEY_LINE.search(self.source)
        slots = tuple(KEY_NAMES.index(n) for n in line[1].split(", ")) if line else None
        object.__setattr__(self, "key_slots", slots)

    @classmethod
    def of(cls, name: str, source: str) -> Script:
        """``source`` with its SHA1, as EVALSHA names it."""
        return cls(name, source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


def key_line(code: str) -> str:
    """The line binding the queue keys that ``code`` uses to KEYS, in ``KEY_NAMES``
    order; K_READY when it uses none, so a cluster still routes the call by a key."""
    used = set(re.findall(r"\bK_[A-Z]+\b", _code(code)))
    names = [name for name in KEY_NAMES if name in used] or [KEY_NAMES[0]]
    slots = ", ".join(f"KEYS[{i}]" for i in range(1, len(names) + 1))
    return f"local {', '.join(names)} = {slots}"


_COMMENT = re.compile(r"--[^\n]*")
_DEFINES = re.compile(r"^local (?:function (\w+)\(|(\w+(?:, \w+)*) =)", re.MULTILINE)


def _code(lua: str) -> str:
    """``lua`` without its comments (a name a comment mentions is not a use)."""
    return _COMMENT.sub("", lua)


def _uses(definition: re.Match[str]) -> re.Pattern[str]:
    """What a use of the local(s) ``definition`` defines looks like: a call of a
    function, any mention of a variable."""
    if definition[1]:
        return re.compile(rf"\b{definition[1]}\(")
    return re.compile(r"\b(?:" + definition[2].replace(", ", "|") + r")\b")


def prelude(common: str, body: str) -> str:
    """common.lua cut to what ``body`` needs: the paragraphs (blocks between
    blank lines) that define no local, and those defining a local that
    ``body`` or another kept paragraph uses, in their original order."""
    blocks = common.split("\n\n")
    defines = {
        i: uses
        for i, block in enumerate(blocks)
        if (uses := [_uses(m) for m in _DEFINES.finditer(block)])
    }
    wanted = _code(body)
    kept: set[int] = set()
    while True:
        new = {
            i
            for i, uses in defines.items()
            if i not in kept and any(use.search(wanted) for use in uses)
        }
        if not new:
            break
        kept |= new
        wanted += "".join(_code(blocks[i]) for i in new)
    return "\n\n".join(b for i, b in enumerate(blocks) if i not in defines or i in kept)


def _load() -> dict[str, Script]:
    folder = files("lexigram.tasks.redis").joinpath("lua")
    common = "\n\n".join(
        folder.joinpath(part).read_text(encoding="utf-8").rstrip("\n")
        for part in ("common.lua", "history.lua")
    )
    scripts = {}
    for name in _NAMES:
        body = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        code = prelude(common, body) + "\n" + body
        scripts[name] = Script.of(name, key_line(code) + "\n" + code)
    return scripts


SCRIPTS = _load()


def rq_timestamp(unix_time: float) -> str:
    """``unix_time`` in rq's timestamp format (its ``utcformat``), as the
    enqueue script takes it: ``2026-11-27T21:54:03.123456Z``."""
    second, micros = divmod(round(unix_time * 1_000_000), 1_000_000)
    return f"{_rq_second(second)}{micros:06d}Z"


@lru_cache(maxsize=2)
def _rq_second(second: int) -> str:
    # Formatting the date and time of day is most of the cost; an enqueue
    # loop stamps many jobs within one second.
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))


def clock_hint() -> tuple[str, str]:
    """This process's clock's current second and that second in rq's format, as the
    lease and ack scripts take them: when the server's clock reads the same second,
    they write their rq timestamp (``started_at``, ``ended_at``) with it and the
    server's microseconds, instead of formatting a date themselves. The
    timestamps are the server's either way."""
    return _hint(int(time.time()))


@lru_cache(maxsize=2)
def _hint(second: int) -> tuple[str, str]:
    return str(second), _rq_second(second)


def pool_sized_in(redis_url: str) -> bool:
    """Whether ``redis_url`` sizes its pool (``max_connections``): such a pool keeps
    all of its connections, none held out for a :class:`HeldConnection`."""
    return "max_connections" in parse_qs(urlsplit(redis_url).query)


async def load_all(client: Redis) -> None:
    """Register every script on the server (one round trip)."""
    async with client.pipeline(transaction=False) as pipe:
        for script in SCRIPTS.values():
            pipe.script_load(script.source)
        await pipe.execute()


class PreparedScript:
    """EVALSHA of one script with fixed keys and leading arguments, encoded once.

    Every call of a queue's script starts with the same arguments (the SHA,
    the queue keys it uses, the job prefix, the queue name); redis-py would
    encode all of them on every call, which cost an enqueue about as much as
    everything else it does on the client. ``script`` is a queue script's
    name or any :class:`Script`; ``keys`` are all of a queue's keys, of
    which the call passes those the script declares (:attr:`Script.key_slots`).
    Calls go out on a connection of the client's pool, as redis-py's own
    would, or on ``held`` when it is free.
    """

    def __init__(
        self,
        client: Redis,
        script: str | Script,
        keys: list[str],
        head: list[Any],
        held: HeldConnection | None = None,
    ) -> None:
        self.client = client
        self.held = held
        self.script = SCRIPTS[script] if isinstance(script, str) else script
        slots = self.script.key_slots
        self.keys = keys if slots is None else [keys[i] for i in slots]
        self.head = head
        encoder = client.get_encoder()  # type: ignore[no-untyped-call]
        self._encode = encoder.encode
        self._encoding: str = encoder.encoding
        self._errors: str = encoder.encoding_errors
        fixed = ["EVALSHA", self.script.sha, len(self.keys), *self.keys, *head]
        self._count = len(fixed)
        self._prefix = b"".join(map(self._bulk, fixed))

    def _bulk(self, arg: Any) -> bytes:
        value = self._encode(arg)
        return b"$%d\r\n%s\r\n" % (len(value), value)

    def pack(self, args: list[Any], *, before: tuple[Any, ...] = ()) -> bytes:
        """The call with ``args`` after the fixed part, in the Redis protocol,
        preceded by the command ``before`` when one is given."""
        parts = [b"*%d\r\n" % len(before), *map(self._bulk, before)] if before else []
        parts += [b"*%d\r\n" % (self._count + len(args)), self._prefix]
        encode, encoding, errors = self._encode, self._encoding, self._errors
        for arg in args:  # _bulk inlined: this runs for every argument of every call
            # The encoder's own result for the common types, without its
            # isinstance checks (half the cost of packing an enqueue).
            kind = arg.__class__
            if kind is str:
                value = arg.encode(encoding, errors)
            elif kind is bytes:
                value = arg
            elif kind is int:
                value = b"%d" % arg
            else:
                value = encode(arg)
            parts.append(b"$%d\r\n%s\r\n" % (len(value), value))
        return b"".join(parts)

    async def __call__(self, args: list[Any]) -> Any:
        """Run the script with ``args``; after a SCRIPT FLUSH, load it and retry once."""
        try:
            return await on_connection(self.client, self.pack(args), replies=1, held=self.held)
        except NoScriptError:
            await self.client.script_load(self.script.source)
            return await self.client.evalsha(
                self.script.sha, len(self.keys), *self.keys, *self.head, *args
            )

    async def call_then_wait(self, args: list[Any], replicas: int, timeout: float) -> list[Any]:
        """Run the script with ``args``, then WAIT on the same connection until
        ``replicas`` replicas have its writes or ``timeout`` seconds pass.

        Returns the script's reply and how many replicas confirmed.
        """
        wait = [b"*3\r\n", *map(self._bulk, ("WAIT", replicas, max(1, round(timeout * 1000))))]
        packed = self.pack(args) + b"".join(wait)
        try:
            replies: list[Any] = await on_connection(
                self.client, packed, replies=2, keep=True, held=self.held
            )
        except NoScriptError:
            await self.client.script_load(self.script.source)
            replies = await on_connection(self.client, packed, replies=2, keep=True, held=self.held)
        return replies


class HeldConnection:
    """One connection of a client's pool, kept out of it for a queue's calls.

    Taking a connection from redis-py's pool and giving it back (a lock,
    metrics hooks and a liveness check) costs a short call such as an
    enqueue about as much client CPU as everything else it does. Calls made
    one after another reuse the held connection; a call made while it is busy
    takes one from the pool as before. A queue holds one only on a pool it
    made itself and whose size the user left to redis-py, so no other user
    of a pool can find it exhausted (or wait on it) because of the held one.
    """

    def __init__(self, client: Redis) -> None:
        self.client = client
        self._idle: AbstractConnection | None = None

    async def take(self) -> AbstractConnection:
        """The held connection if it is free and connected, else one from the pool.

        A closed one (a failed or cancelled call closes it) goes back to the
        pool, whose connect does what the connection's own reconnect would
        not: a Sentinel-managed connection asks the sentinels for the master.
        """
        connection, self._idle = self._idle, None
        if connection is not None and connection.is_connected:
            return connection
        pool = self.client.connection_pool
        if connection is not None:
            await pool.release(connection)
        taken: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]
        return taken

    async def give_back(self, connection: AbstractConnection) -> None:
        """Keep ``connection`` as the held one if none is, else return it to the pool
        (also when the server asked for it to reconnect, which the pool handles)."""
        reconnect = getattr(connection, "should_reconnect", None)
        if self._idle is None and not (reconnect is not None and reconnect()):
            self._idle = connection
        else:
            await self.client.connection_pool.release(connection)

    async def release(self) -> None:
        """Return the held connection to the pool."""
        connection, self._idle = self._idle, None
        if connection is not None:
            await self.client.connection_pool.release(connection)


async def on_connection(
    client: Redis,
    packed: bytes,
    *,
    replies: int,
    keep: bool = False,
    held: HeldConnection | None = None,
    errors: bool = False,
) -> Any:
    """Send commands packed in the Redis protocol on a connection of ``client``'s
    pool (``held``'s when it is free) and return the last of their ``replies``
    (all of them with ``keep``); retried like redis-py's own. With ``errors``, all
    of them too, an error reply in its place rather than raised."""
    pool = client.connection_pool
    connection: AbstractConnection
    if held is not None:
        connection = await held.take()
    else:
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]

    async def send_and_read() -> Any:
        await connection.send_packed_command(packed)
        if errors:
            return [await _reply_or_error(connection) for _ in range(replies)]
        if keep:
            return [await connection.read_response() for _ in range(replies)]
        for _ in range(replies - 1):
            await connection.read_response()
        return await connection.read_response()

    try:
        return await connection.retry.call_with_retry(
            send_and_read, _disconnect_on_error(connection)
        )
    except BaseException as exc:
        # Cancelled or failed before the last reply: drop the connection
        # rather than hand it back with an unread reply. An error reply to
        # the only command (NoScriptError, a script's error) leaves none.
        if not (isinstance(exc, ResponseError) and replies == 1):
            await connection.disconnect(nowait=True)
        raise
    finally:
        if held is not None:
            await held.give_back(connection)
        else:
            await pool.release(connection)


async def _reply_or_error(connection: AbstractConnection) -> Any:
    try:
        return await connection.read_response()
    except ResponseError as exc:  # the connection reads on: the next reply is intact
        return exc


def _disconnect_on_error(connection: AbstractConnection) -> Callable[[Any], Awaitable[None]]:
    async def disconnect(_error: Any) -> None:
        await connection.disconnect()

    return disconnect


async def run_after_blpop(
    script: PreparedScript, wake_key: str, timeout: float, args: list[Any]
) -> Any:
    """BLPOP ``wake_key`` for up to ``timeout`` seconds, then run ``script``: one round trip.

    Both commands go out in one write on one connection, so the server runs
    the script the moment BLPOP returns. This is what a redis-py pipeline
    does, without its bookkeeping, which costs as much as the commands
    themselves on a worker's idle path.
    """
    packed = script.pack(args, before=("BLPOP", wake_key, timeout))
    try:
        return await on_connection(script.client, packed, replies=2, held=script.held)
    except NoScriptError:
        await script.client.script_load(script.script.source)
        return await script.client.evalsha(
            script.script.sha, len(script.keys), *script.keys, *script.head, *args
        )
