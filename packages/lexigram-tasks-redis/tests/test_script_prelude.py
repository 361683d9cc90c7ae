"""How the Lua scripts are put together and called, and the enqueue script's time stamp."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from lexigram.tasks.redis._scripts import KEY_NAMES, SCRIPTS, PreparedScript, rq_timestamp


def _code(source: str) -> str:
    return re.sub(r"--[^\n]*", "", source)


def test_each_script_keeps_only_paragraphs_of_locals_it_uses() -> None:
    # A paragraph of locals none of which is read is work on every call (the
    # clock paragraph is a TIME call); a missing one fails the script when it runs.
    for script in SCRIPTS.values():
        code = _code(script.source)
        for paragraph in script.source.split("\n\n"):
            lines = re.findall(r"^local (\w+(?:, \w+)*) =", _code(paragraph), re.MULTILINE)
            names = [n for line in lines for n in line.split(", ")]
            used = [n for n in names if len(re.findall(rf"\b{n}\b", code)) > 1]
            assert used or not names, (script.name, names)


def test_scripts_not_using_the_clock_do_not_read_it() -> None:
    for name in ("dead_letters", "progress", "list"):
        assert "TIME" not in SCRIPTS[name].source, name
    for name in ("lease", "ack", "nack", "cancel"):
        assert "local clock = redis.call('TIME')" in SCRIPTS[name].source, name


def test_enqueue_reads_the_clock_only_for_a_job_with_a_run_at() -> None:
    code = _code(SCRIPTS["enqueue"].source)
    assert "local clock" not in code
    assert code.count("redis.call('TIME')") == 1


@pytest.mark.parametrize(
    "unix_time",
    [0.0, 1_700_000_000.125, 1_700_000_000.9999996, 1_764_892_799.999999, 4_102_444_800.5],
)
def test_rq_timestamp_is_rqs_format(unix_time: float) -> None:
    # rq's utcformat of a datetime built from the same Unix time
    expected = datetime.fromtimestamp(unix_time, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert rq_timestamp(unix_time) == expected


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_a_packed_call_is_what_redis_py_would_send(encoding: str) -> None:
    client = Redis(encoding=encoding)  # connects lazily: nothing is sent
    keys, head = [f"k{i}" for i in range(1, 13)], ["rq:job:", "q"]
    args = ["é-stamp", b"\x00{raw}", 0, -7, 12345678901234567890, 1.5, ""]
    script = PreparedScript(client, "enqueue", keys, head)
    # enqueue declares K_READY, K_SCHEDULED, K_PRIO, K_WAKE, K_DEDUP and K_QUEUES.
    sent = ["k1", "k2", "k5", "k6", "k7", "k10"]
    expected = Connection(encoding=encoding).pack_command(
        "EVALSHA", script.script.sha, len(sent), *sent, *head, *args
    )
    assert script.pack(args) == b"".join(expected)


def test_each_script_takes_exactly_the_queue_keys_it_uses() -> None:
    # A key used but not declared is nil in the script; one declared but unused
    # costs every call.
    for script in SCRIPTS.values():
        first, rest = script.source.split("\n", 1)
        declared = re.match(r"local (K_\w+(?:, K_\w+)*) = KEYS\[1\]", first)
        assert declared is not None, script.name
        names = declared[1].split(", ")
        used = sorted(set(re.findall(r"\bK_[A-Z]+\b", _code(rest))), key=KEY_NAMES.index)
        assert names == (used or ["K_READY"]), script.name
        assert script.key_slots == tuple(KEY_NAMES.index(name) for name in names)
