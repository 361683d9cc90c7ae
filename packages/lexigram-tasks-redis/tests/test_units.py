"""Unit tests that need no Redis server: key layout, redaction, scripts, protocols."""

from __future__ import annotations

import re

import pytest
from rq import Queue
from rq.job import Job as RQJob
from rq.registry import CanceledJobRegistry, FailedJobRegistry, StartedJobRegistry

from lexigram.tasks import CacheBackendResultStore as LazyStore
from lexigram.tasks import ConfigurationError, TaskBackendRegistry
from lexigram.tasks import RedisTaskQueue as LazyQueue
from lexigram.tasks.control import JobControlProtocol
from lexigram.tasks.job import DEFAULT_MAX_JOB_BYTES
from lexigram.tasks.protocol import Capability, TaskQueueProtocol
from lexigram.tasks.ratelimit import RateLimiter
from lexigram.tasks.redis import (
    CacheBackendResultStore,
    RedisRateLimiter,
    RedisTaskQueue,
    validate_url,
)
from lexigram.tasks.redis._scripts import SCRIPTS
from lexigram.tasks.redis.keys import JOB_PREFIX, QueueKeys, job_key
from lexigram.tasks.results import ResultStore


def test_keys_are_rqs_own_names() -> None:
    keys = QueueKeys.for_queue("emails")
    rq_queue = Queue("emails", connection=_unused_connection())
    assert keys.ready == rq_queue.key
    assert keys.queues == Queue.redis_queues_keys
    assert keys.started == StartedJobRegistry(queue=rq_queue).key
    assert keys.failed == FailedJobRegistry(queue=rq_queue).key
    assert keys.canceled == CanceledJobRegistry(queue=rq_queue).key
    rq_key = RQJob.key_for("abc")  # bytes in rq 3, str in rq 2
    assert job_key("abc") == (rq_key.decode() if isinstance(rq_key, bytes) else rq_key)
    assert job_key("abc") == f"{JOB_PREFIX}abc"
    assert len(keys.as_list()) == 12
    assert keys.queues not in keys.queue_owned()


def test_backend_declares_what_the_contract_checks() -> None:
    queue = RedisTaskQueue(redis_url="redis://localhost:6379/0", queue_name="q")
    assert isinstance(queue, TaskQueueProtocol)
    assert queue.system == "redis"
    assert queue.capabilities == {
        Capability.DELAY,
        Capability.PRIORITY,
        Capability.UNIQUE,
        Capability.INSPECT,
        Capability.CANCEL,
        Capability.WORKERS,
        Capability.ATTEMPTS,
    }
    assert isinstance(queue, JobControlProtocol)


def test_registered_under_its_type_and_importable_from_lexigram_tasks() -> None:
    made = TaskBackendRegistry().create("redis", redis_url="redis://h:1/0", queue_name="x")
    assert isinstance(made, RedisTaskQueue)
    assert LazyQueue is RedisTaskQueue
    assert LazyStore is CacheBackendResultStore


def test_reprs_never_show_the_password() -> None:
    url = "redis://user:s3cret@redis.internal:6380/2"
    for thing in (
        RedisTaskQueue(redis_url=url, queue_name="q"),
        CacheBackendResultStore(redis_url=url),
        RedisRateLimiter(redis_url=url),
    ):
        assert "s3cret" not in repr(thing)
        assert "***" in repr(thing)


def test_result_store_and_limiter_satisfy_cores_protocols() -> None:
    assert isinstance(CacheBackendResultStore(), ResultStore)
    assert isinstance(RedisRateLimiter(), RateLimiter)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"finished_ttl": -1}, "finished_ttl"), ({"failure_ttl": 0}, "failure_ttl")],
)
def test_bad_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisTaskQueue(**kwargs)  # type: ignore[arg-type]


def test_every_script_starts_with_its_keys_then_the_shared_prelude() -> None:
    for script in SCRIPTS.values():
        keys, rest = script.source.split("\n", 1)
        assert keys.startswith("local K_") and rest.startswith("-- Shared prelude")
        assert len(script.sha) == 40


def test_each_script_defines_exactly_the_prelude_functions_it_calls() -> None:
    # Redis runs a script's whole text per call, so an unused function is
    # work on every call; a missing one would fail only when its branch runs.
    for script in SCRIPTS.values():
        code = re.sub(r"--[^\n]*", "", script.source)
        defined = re.findall(r"^local function (\w+)\(", code, re.MULTILINE)
        called = set(re.findall(r"(?<![.:\w])(\w+)\(", code))
        assert not called - set(defined) - _LUA_BUILTINS, script.name
        unused = [f for f in defined if len(re.findall(rf"\b{f}\(", code)) == 1]
        assert not unused, (script.name, unused)


_LUA_BUILTINS = {"function", "tonumber", "tostring", "ipairs", "pairs", "type", "unpack"}


def _unused_connection() -> object:
    import redis

    return redis.Redis()  # rq wants a connection object to build names; nothing is sent


@pytest.mark.parametrize(
    "url",
    ["redis://localhost:6379/0", "rediss://:pw@host:6380/1", "unix:///tmp/redis.sock?db=0"],
)
def test_redis_urls_are_accepted(url: str) -> None:
    validate_url(url)
    RedisTaskQueue(redis_url=url)
    CacheBackendResultStore(redis_url=url)
    RedisRateLimiter(redis_url=url)


@pytest.mark.parametrize(
    ("url", "found"),
    [
        ("http://:hunter2@localhost:6379/0", "scheme 'http'"),
        ("amqp://guest:guest@localhost:5672/", "scheme 'amqp'"),
        ("localhost:6379", "no scheme"),
    ],
)
def test_other_url_schemes_are_refused_at_construction(url: str, found: str) -> None:
    for build in (validate_url, RedisTaskQueue, CacheBackendResultStore, RedisRateLimiter):
        with pytest.raises(ConfigurationError) as caught:
            build(url)
        message = str(caught.value)
        assert found in message
        assert "redis://" in message and "rediss://" in message and "unix://" in message
        assert "hunter2" not in message


def test_max_job_bytes_is_bounded_by_the_redis_string_limit() -> None:
    assert RedisTaskQueue(max_job_bytes=1024).max_job_bytes == 1024
    assert RedisTaskQueue().max_job_bytes == DEFAULT_MAX_JOB_BYTES
    with pytest.raises(ValueError, match="536,870,912"):
        RedisTaskQueue(max_job_bytes=600 * 1024 * 1024)
    with pytest.raises(ValueError, match="max_job_bytes"):
        RedisTaskQueue(max_job_bytes=0)
