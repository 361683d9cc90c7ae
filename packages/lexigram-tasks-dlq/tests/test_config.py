"""The tasks.dead_letter configuration section, with core and this package alone.

Storages that need an extra are configured in tests-integration/dlq/test_config_storages.py.
"""

from __future__ import annotations

import pytest

from lexigram.tasks import ConfigurationError, DeadLetterQueue
from lexigram.tasks.config import ConfigKeyError
from lexigram.tasks.dlq import MemoryDeadLetterStorage
from lexigram.tasks.dlq.config import storage_types
from lexigram.tasks.plugins import DLQ_STORAGES
from lexigram.tasks.testing import run_without


def test_memory_is_the_default() -> None:
    assert isinstance(DeadLetterQueue.from_config({}).storage, MemoryDeadLetterStorage)
    assert isinstance(
        DeadLetterQueue.from_config({"storage": "memory"}).storage, MemoryDeadLetterStorage
    )


def test_unknown_storage_and_keys_are_named() -> None:
    with pytest.raises(ConfigurationError, match=r"tasks.dead_letter.storage: unknown .*'sqlite'"):
        DeadLetterQueue.from_config({"storage": "sqlite"})
    with pytest.raises(ConfigurationError) as info:
        DeadLetterQueue.from_config({"storage": "memory", "size": 10})
    assert "'size'" in str(info.value)
    with pytest.raises(ConfigurationError, match="must be a mapping"):
        DeadLetterQueue.from_config(["memory"])  # type: ignore[arg-type]


def test_problems_name_their_key_for_the_configuration_loader() -> None:
    """Core's loader reports ``ConfigKeyError.key`` at that key's line, without re-wording."""
    cases = [
        ({"storage": "sqlite"}, ("storage",)),
        ({"storage": 3}, ("storage",)),
        ({"storage": "memory", "size": 10}, ()),
        ({"rabbitmq": {"queue_names": ["a"]}}, ("rabbitmq", "amqp_url")),
        ({"rabbitmq": "amqp://x"}, ("rabbitmq",)),
    ]
    for options, key in cases:
        with pytest.raises(ConfigKeyError) as info:
            DeadLetterQueue.from_config(options)
        assert info.value.key == key, options
        assert str(info.value) == f"tasks.dead_letter{''.join('.' + k for k in key)}: " + (
            info.value.reason
        )


def test_builtin_storages_are_entry_points_with_their_extras() -> None:
    eps = DLQ_STORAGES.entry_points()
    assert storage_types() == ["memory", "postgres", "redis"]
    assert (eps["memory"].extras, eps["redis"].extras, eps["postgres"].extras) == (
        [],
        ["redis"],
        ["postgres"],
    )


# A fresh interpreter in which lexigram-tasks-redis (what the [redis] extra brings)
# cannot be imported.
NO_REDIS_PROBE = """
from lexigram.tasks import ConfigurationError
from lexigram.tasks.dlq import DeadLetterQueue

try:
    DeadLetterQueue.from_config({"storage": "redis", "redis_url": "redis://localhost"})
except ConfigurationError as exc:
    print(exc)
"""


def test_a_storage_whose_extra_is_missing_gives_the_pip_command() -> None:
    result = run_without(["lexigram.tasks.redis"], NO_REDIS_PROBE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "tasks.dead_letter.storage: dead-letter storage 'redis' needs the 'redis' extra of "
        "lexigram-tasks-dlq ('lexigram.tasks.redis' is not installed): "
        'pip install "lexigram-tasks-dlq[redis]"'
    )
