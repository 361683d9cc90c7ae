"""tasks.dead_letter with the Redis, PostgreSQL and RabbitMQ parts (built, not connected)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lexigram.tasks import ConfigurationError, DeadLetterQueue, TaskProvider
from lexigram.tasks.dlq import (
    PostgresDeadLetterStorage,
    RabbitMQDeadLetterFeeder,
    RedisDeadLetterStorage,
)


def test_storage_keys_are_the_storage_class_keywords() -> None:
    dlq = DeadLetterQueue.from_config(
        {"storage": "redis", "redis_url": "redis://:pw@cache:6379/2", "prefix": "app:dlq"}
    )
    assert isinstance(dlq.storage, RedisDeadLetterStorage)
    assert (dlq.storage.redis_url, dlq.storage.prefix) == ("redis://:pw@cache:6379/2", "app:dlq")
    assert "pw" not in repr(dlq)
    pg = DeadLetterQueue.from_config(
        {"storage": "postgres", "postgres_dsn": "postgresql://db/app", "schema": "jobs"}
    )
    assert isinstance(pg.storage, PostgresDeadLetterStorage)
    assert pg.storage.table == '"jobs".failure_records'


def test_unknown_keys_are_named_with_the_accepted_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        DeadLetterQueue.from_config({"storage": "redis", "redis_uri": "redis://x"})
    assert "'redis_uri'" in str(info.value)
    assert "accepted: storage, rabbitmq, prefix, redis_url" in str(info.value)


def test_a_rabbitmq_section_adds_a_feeder_started_with_the_queue() -> None:
    dlq = DeadLetterQueue.from_config(
        {
            "storage": "memory",
            "rabbitmq": {"amqp_url": "amqp://guest:guest@mq/", "queue_names": "emails"},
        }
    )
    [feeder] = dlq.feeders
    assert isinstance(feeder, RabbitMQDeadLetterFeeder)
    assert feeder.dlq is dlq
    assert feeder.queue_names == ("emails",)
    with pytest.raises(ConfigurationError, match=r"tasks.dead_letter.rabbitmq.amqp_url"):
        DeadLetterQueue.from_config({"rabbitmq": {"queue_names": ["a"]}})
    with pytest.raises(ConfigurationError, match=r"'colour'"):
        DeadLetterQueue.from_config({"rabbitmq": {"amqp_url": "amqp://mq/", "colour": "red"}})


def test_yaml_configuration_gives_the_provider_its_dead_letter_queue(tmp_path: Path) -> None:
    path = tmp_path / "lexigram.yaml"
    path.write_text(
        "tasks:\n"
        "  backend: {type: memory}\n"
        "  dead_letter:\n"
        "    storage: redis\n"
        "    redis_url: redis://127.0.0.1:6379/0\n"
        "    prefix: myapp:dlq\n"
    )
    provider = TaskProvider.from_config(path)
    assert isinstance(provider.dead_letter, DeadLetterQueue)
    assert isinstance(provider.dead_letter.storage, RedisDeadLetterStorage)
    assert provider.dead_letter.storage.prefix == "myapp:dlq"
