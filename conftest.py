"""Suite-wide test settings.

The suite turns every warning into an error (pyproject.toml), including the
ResourceWarning that the garbage collector raises for a connection nobody
closed. Left to itself the collector runs at some later moment, inside an
unrelated test; collecting after every test reports a leak in the test that
made it (at its teardown).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    yield
    gc.collect()
