"""Suite-wide test settings.

The suite turns every warning into an error (pyproject.toml), including the
ResourceWarning that the garbage collector raises for a connection nobody
closed. Left to itself the collector runs at some later moment, inside an
unrelated test; collecting at the end of every test module reports a leak in
the module that made it (at its last test's teardown). After every test
would pin it to the test, but doubled the suite's CPU time.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module", autouse=True)
def _collect_garbage_after_each_module() -> Iterator[None]:
    yield
    gc.collect()
