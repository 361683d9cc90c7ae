"""The real Redis of the repository's integration tests (``LEXIGRAM_TEST_REDIS_URL``,
else testcontainers, else a failure saying how to provide one)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_SERVICES = Path(__file__).resolve().parents[2] / "tests-integration" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_lexigram_test_services", _SERVICES)
assert _spec is not None
assert _spec.loader is not None
_services = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_services)

redis_url = _services.redis_url
