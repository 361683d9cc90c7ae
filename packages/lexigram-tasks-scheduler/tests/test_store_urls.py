"""A template store refuses a URL of the wrong kind when it is built, before connecting."""

from __future__ import annotations

import pytest

from lexigram.tasks import ConfigurationError
from lexigram.tasks.scheduler.postgres_store import PostgresTemplateStore
from lexigram.tasks.scheduler.redis_store import RedisTemplateStore


def test_redis_template_store_refuses_a_url_that_is_not_redis() -> None:
    with pytest.raises(ConfigurationError, match="not a Redis URL") as info:
        RedisTemplateStore("http://user:secret@host/0")
    assert "secret" not in str(info.value)


def test_postgres_template_store_refuses_a_dsn_that_is_not_postgresql() -> None:
    with pytest.raises(ConfigurationError) as info:
        PostgresTemplateStore("redis://user:secret@host/0")
    assert "secret" not in str(info.value)
