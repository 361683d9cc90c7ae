"""The Django example shop on the real PostgreSQL, with its jobs on PostgreSQL or Redis.

The checks are in ``checks_*.py``: Django's settings are process-wide, so
they run in a ``python -m pytest`` process of their own, once per backend
(that backend's module, then ``checks_any_backend.py``), and this session
never imports Django.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _service(var: str, example: str) -> str:
    url = os.environ.get(var)
    if not url:
        pytest.fail(f"set {var} (e.g. {example}) to run the Django example", pytrace=False)
    return url


@pytest.fixture
def schema() -> Iterator[str]:
    """A schema for the shop's tables and one for its job tables, dropped afterwards."""
    name = f"shop_{uuid.uuid4().hex[:10]}"
    yield name
    dsn = _service("LEXIGRAM_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for dropped in (name, f"{name}_tasks"):
            conn.execute(f'DROP SCHEMA IF EXISTS "{dropped}" CASCADE'.encode())


@pytest.mark.parametrize("backend", ["postgres", "redis"])
def test_shop_checks(backend: str, schema: str) -> None:
    # The checks run in one process of their own: not in parallel (PYTEST_ADDOPTS=-n ...).
    inherited = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env = {
        **inherited,
        "DATABASE_URL": _service(
            "LEXIGRAM_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
        ),
        "REDIS_URL": _service("LEXIGRAM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "SHOP_QUEUE": backend,
        "SHOP_SCHEMA": schema,
        "DJANGO_SETTINGS_MODULE": "shop_project.settings",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        "LEXIGRAM_ENV": "testing",
    }
    result = subprocess.run(
        [
            sys.executable,
            *("-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "checks_plugin"),
            str(HERE / f"checks_{backend}.py"),
            str(HERE / "checks_any_backend.py"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
