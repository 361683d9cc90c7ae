"""A redis+sentinel:// URL is accepted wherever a Redis URL is read (no server needed).

The configuration loader, the scheduler's store lookup (by URL, and the
default store of a Redis queue), the DLQ command's ``--storage-url`` and
the redaction of URLs in messages all know the Sentinel schemes.
"""

from __future__ import annotations

import argparse

from lexigram.tasks import TaskProvider
from lexigram.tasks.dlq.cli import storage_from_url
from lexigram.tasks.dlq.redis import RedisDeadLetterStorage
from lexigram.tasks.redact import redact_url, redact_urls
from lexigram.tasks.redis import CacheBackendResultStore, RedisRateLimiter, RedisTaskQueue
from lexigram.tasks.scheduler.redis_store import RedisTemplateStore
from lexigram.tasks.scheduler.scheduler import default_store
from lexigram.tasks.scheduler.store import store_from_url

URL = "redis+sentinel://:pw@s1:26379,s2:26379/mymaster/0?sentinel_password=watch"


def test_the_configuration_takes_sentinel_urls_for_every_redis_component() -> None:
    provider = TaskProvider.from_config(
        {
            "tasks": {
                "backend": {"type": "redis", "redis_url": URL, "queue_name": "q"},
                "result_store": {"type": "redis", "redis_url": URL},
                "rate_limiter": {"type": "redis", "redis_url": URL},
            }
        }
    )
    assert isinstance(provider.queue, RedisTaskQueue) and provider.queue.redis_url == URL
    assert isinstance(provider.result_store, CacheBackendResultStore)
    assert provider.result_store.redis_url == URL
    assert isinstance(provider.rate_limiter, RedisRateLimiter)


def test_the_scheduler_keeps_its_state_through_the_same_sentinels() -> None:
    store = store_from_url("rediss+sentinel://s1/mymaster/1")
    assert isinstance(store, RedisTemplateStore)
    default = default_store(RedisTaskQueue(URL))
    assert isinstance(default, RedisTemplateStore) and default.redis_url == URL


def test_the_dlq_command_reads_a_sentinel_storage_url() -> None:
    args = argparse.Namespace(prefix="lexigram:dlq", schema="public")
    storage = storage_from_url(URL, args)
    assert isinstance(storage, RedisDeadLetterStorage) and storage.redis_url == URL


def test_passwords_in_the_query_are_redacted_too() -> None:
    shown = "redis+sentinel://:***@s1:26379,s2:26379/mymaster/0?sentinel_password=***"
    assert redact_url(URL) == shown
    assert redact_urls(f"cannot reach {URL}: refused") == f"cannot reach {shown}: refused"
    assert redact_url("redis://h:6379/0?password=x&db=1") == "redis://h:6379/0?password=***&db=1"
