"""A DLQ store refuses a URL of the wrong kind when it is built, before connecting."""

from __future__ import annotations

import pytest

from lexigram.tasks import ConfigurationError
from lexigram.tasks.dlq.postgres import PostgresDeadLetterStorage
from lexigram.tasks.dlq.redis import RedisDeadLetterStorage


@pytest.mark.parametrize("url", ["http://user:secret@host/0", "amqp://host/", "localhost:6379"])
def test_redis_store_refuses_a_url_that_is_not_redis(url: str) -> None:
    with pytest.raises(ConfigurationError, match="not a Redis URL") as info:
        RedisDeadLetterStorage(url)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("dsn", ["http://user:secret@host/db", "redis://host/0"])
def test_postgres_store_refuses_a_dsn_that_is_not_postgresql(dsn: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        PostgresDeadLetterStorage(dsn)
    assert "secret" not in str(info.value)
