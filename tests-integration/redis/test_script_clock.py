"""started_at and ended_at are the server's time in rq's format, whatever the client's clock says.

The lease and ack scripts take the client's current second, formatted, and use it
when the server's clock reads the same second (so that they format only the
microseconds); on any other second they format the server's time themselves.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.resources import files

import pytest
import redis.asyncio as aioredis

from lexigram.tasks.job import Job
from lexigram.tasks.redis import RedisTaskQueue, _scripts

RQ_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


async def _server_time(client: aioredis.Redis) -> float:
    seconds, micros = await client.time()
    return seconds + micros / 1e6


def _parsed(stamp: bytes) -> float:
    text = stamp.decode()
    assert RQ_FORMAT.match(text), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def _hint_of(second: int) -> tuple[str, str]:
    return str(second), datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")


_CLIENT_CLOCK = _scripts.clock_hint

CLOCKS: dict[str, Callable[[float], tuple[str, str]]] = {
    # The client's clock as it is (the server's, on this machine).
    "in step": lambda server: _CLIENT_CLOCK(),
    # A client whose clock is a second behind: the scripts format the date themselves.
    "a second behind": lambda server: _hint_of(int(server) - 1),
    # A client whose clock says 2000 (a hint must never be taken for the server's time).
    "far off": lambda server: _hint_of(946684800),
    # The hint of the server's own second: the scripts take it, unless the second
    # turned before they ran.
    "the server's second": lambda server: _hint_of(int(server)),
}


@pytest.mark.parametrize("clock", list(CLOCKS))
async def test_started_and_ended_at_are_the_servers_time_in_rqs_format(
    queue: RedisTaskQueue, monkeypatch: pytest.MonkeyPatch, clock: str
) -> None:
    client = queue.client
    job = Job(task="clock.job", queue=queue.queue_name)
    await queue.enqueue(job)
    key = queue.keys.job(job.id)

    before = await _server_time(client)
    monkeypatch.setattr(_scripts, "clock_hint", lambda: CLOCKS[clock](before))
    [delivery] = await queue.dequeue(max_jobs=1, lease_seconds=30)
    after = await _server_time(client)
    started_at = _parsed(await client.hget(key, "started_at"))
    assert before - 1e-6 <= started_at <= after + 1e-6

    before = await _server_time(client)
    monkeypatch.setattr(_scripts, "clock_hint", lambda: CLOCKS[clock](before))
    await queue.ack(delivery)
    after = await _server_time(client)
    ended_at = _parsed(await client.hget(key, "ended_at"))
    assert before - 1e-6 <= ended_at <= after + 1e-6
    assert await client.hget(key, "status") == b"finished"


@pytest.mark.parametrize("micros", [0, 42, 99_999, 100_000, 999_999])
@pytest.mark.parametrize("hinted", [True, False], ids=["hint taken", "hint of another second"])
async def test_the_scripts_clock_as_text_at_any_microsecond(
    client: aioredis.Redis, micros: int, hinted: bool
) -> None:
    # The prelude's clock paragraphs with the server's TIME replaced by a chosen one.
    body = "return {NOW_TEXT, now_iso(ARGV[5], ARGV[6])}"
    common = (files("lexigram.tasks.redis") / "lua" / "common.lua").read_text(encoding="utf-8")
    source = _scripts.prelude(common, body) + "\n" + body
    assert source.count("redis.call('TIME')") == 1
    source = source.replace("redis.call('TIME')", "{ARGV[3], ARGV[4]}")
    second = 1764921166  # 2025-12-05T07:52:46Z
    hint = _hint_of(second if hinted else second - 1)
    now_text, stamp = await client.eval(source, 0, "", "", second, micros, *hint)
    assert now_text == f"{second}.{micros:06d}".encode()
    assert stamp == f"2025-12-05T07:52:46.{micros:06d}Z".encode()
