"""Template stores are found through the ``lexigram.tasks.scheduler.stores`` entry points."""

from __future__ import annotations

import pytest

from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.plugins import TEMPLATE_STORES
from lexigram.tasks.scheduler.store import MemoryTemplateStore, store_from_url
from lexigram.tasks.testing import run_without


def test_builtin_stores_are_entry_points_with_their_extras() -> None:
    eps = TEMPLATE_STORES.entry_points()
    assert sorted(eps) == ["memory", "postgres", "redis"]
    assert (eps["memory"].extras, eps["redis"].extras, eps["postgres"].extras) == (
        [],
        ["redis"],
        ["postgres"],
    )


def test_memory_and_an_unknown_scheme() -> None:
    assert isinstance(store_from_url("memory"), MemoryTemplateStore)
    with pytest.raises(ConfigurationError) as info:
        store_from_url("http://example.com/")
    assert str(info.value) == (
        "unknown template store 'http'; registered types: 'memory', 'postgres', 'redis'"
    )


PROBE = """
from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.scheduler.store import store_from_url

try:
    store_from_url("postgresql://localhost/db")
except ConfigurationError as exc:
    print(exc)
"""


def test_a_store_whose_extra_is_missing_gives_the_pip_command() -> None:
    result = run_without(["lexigram.tasks.postgres"], PROBE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "PostgresTemplateStore needs the 'postgres' extra of lexigram-tasks-scheduler "
        "('lexigram.tasks.postgres' is not installed): "
        'pip install "lexigram-tasks-scheduler[postgres]"'
    )
