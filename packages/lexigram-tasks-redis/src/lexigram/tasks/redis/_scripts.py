"""The Lua scripts behind RedisTaskQueue, run by SHA (EVALSHA) and loaded on demand.

Each script is ``lua/common.lua`` followed by its own file, so every
operation on a queue is one atomic server-side call and one round trip.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

_NAMES = ("enqueue", "lease", "ack", "nack", "extend", "counts", "dead_letters")


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str


def _load() -> dict[str, Script]:
    folder = files("lexigram.tasks.redis").joinpath("lua")
    common = folder.joinpath("common.lua").read_text(encoding="utf-8")
    scripts = {}
    for name in _NAMES:
        source = common + "\n" + folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        scripts[name] = Script(name, source, sha)
    return scripts


SCRIPTS = _load()


async def load_all(client: Redis) -> None:
    """Register every script on the server (one round trip)."""
    async with client.pipeline(transaction=False) as pipe:
        for script in SCRIPTS.values():
            pipe.script_load(script.source)
        await pipe.execute()


async def run(client: Redis, name: str, keys: list[str], args: list[Any]) -> Any:
    """EVALSHA ``name``; after a server restart or SCRIPT FLUSH, load it and retry once."""
    script = SCRIPTS[name]
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        await client.script_load(script.source)
        return await client.evalsha(script.sha, len(keys), *keys, *args)


async def run_after_blpop(
    client: Redis, wake_key: str, timeout: float, name: str, keys: list[str], args: list[Any]
) -> Any:
    """BLPOP ``wake_key`` for up to ``timeout`` seconds, then EVALSHA ``name``: one round trip.

    Both commands go out in one write on one connection, so the server runs
    the script the moment BLPOP returns. This is what a redis-py pipeline
    does, without its bookkeeping, which costs as much as the commands
    themselves on a worker's idle path.
    """
    script = SCRIPTS[name]
    pool = client.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    packed = connection.pack_commands(
        [("BLPOP", wake_key, timeout), ("EVALSHA", script.sha, len(keys), *keys, *args)]
    )

    async def send_and_read() -> Any:
        await connection.send_packed_command(packed)
        await connection.read_response()  # the token, or None when BLPOP timed out
        return await connection.read_response()

    try:
        try:
            return await connection.retry.call_with_retry(
                send_and_read, lambda _error: connection.disconnect()
            )
        except NoScriptError:
            await client.script_load(script.source)
            return await client.evalsha(script.sha, len(keys), *keys, *args)
    except BaseException:
        # Cancelled or failed between the two replies: drop the connection
        # rather than hand it back with an unread reply.
        await connection.disconnect(nowait=True)
        raise
    finally:
        await pool.release(connection)
