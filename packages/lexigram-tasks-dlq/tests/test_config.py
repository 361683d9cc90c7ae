"""The tasks.dead_letter configuration section, with core and this package alone.

Storages that need an extra are configured in tests-integration/dlq/test_config_storages.py.
"""

from __future__ import annotations

import pytest

from lexigram.tasks import ConfigurationError, DeadLetterQueue
from lexigram.tasks.dlq import MemoryDeadLetterStorage


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
