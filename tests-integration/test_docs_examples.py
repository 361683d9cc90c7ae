"""Every ```python block in docs/ runs, so the documentation cannot rot.

The blocks of one page run in order in one namespace; top-level ``await``
is allowed, and a block may also call ``asyncio.run`` as a script would.
``REDIS_URL``, ``AMQP_URL`` and ``DATABASE_URL`` point at the test services
while they run. A snippet that is not meant to run uses
another fence (```text, ```yaml, ```console).
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import types
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def pages_with_examples() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if FENCE.search(p.read_text()))


@pytest.fixture
def service_env(
    redis_url: str, amqp_url: str, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("AMQP_URL", amqp_url)
    monkeypatch.setenv("DATABASE_URL", postgres_dsn)
    monkeypatch.setenv("LEXIGRAM_ENV", "testing")


@pytest.mark.parametrize("page", pages_with_examples(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_examples_run(page: Path, service_env: None, tmp_path: Path) -> None:
    module = types.ModuleType(f"docs_{page.stem.replace('-', '_')}")
    namespace = module.__dict__
    namespace["__file__"] = str(page)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # examples may write files (e.g. a lexigram.yaml)
    loop = asyncio.new_event_loop()
    try:
        _run_blocks(page, namespace, loop)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        os.chdir(cwd)


def _run_blocks(page: Path, namespace: dict[str, object], loop: asyncio.AbstractEventLoop) -> None:
    """Blocks with top-level ``await`` run on ``loop``; plain ones (which may call
    ``asyncio.run`` themselves, as a script would) run outside it."""
    text = page.read_text()
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start(1)) + 1
        source = "\n" * (line - 1) + match.group(1)
        code = compile(
            source, str(page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
        )
        result = eval(code, namespace)
        if asyncio.iscoroutine(result):
            loop.run_until_complete(result)
