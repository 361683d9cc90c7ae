"""Every ```python block in docs/ and the README runs, so the documentation cannot rot.

Two modes, chosen per page:

- **Scripts.** A page that carries the marker ``<!-- examples: scripts -->``
  (the README and the home page do) promises that each of its blocks, saved
  as a file, runs: each block is written to a file of its own and run by this
  Python in a fresh process, which must exit with status 0. A block that
  leans on top-level ``await`` or on a name from an earlier block fails.
- **One session** (every other page). The blocks of a page run in order in
  one namespace; top-level ``await`` is allowed, as in ``python -m asyncio``,
  and a block may also call ``asyncio.run`` as a script would. Such a page
  says so at its top.

``REDIS_URL``, ``AMQP_URL`` and ``DATABASE_URL`` point at the test services
while they run, and the working directory is a fresh temporary one. A
snippet that is not meant to run uses another fence (```text, ```yaml,
```console).
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SCRIPTS_MARKER = "<!-- examples: scripts -->"
#: Pages that must carry the marker: the first things a new user pastes.
SCRIPT_PAGES = {ROOT / "README.md", DOCS / "index.md"}


#: Session pages that do not say yet how to run their examples; no page may join them.
SAYS_HOW = re.compile(r"running-the-examples|python -m asyncio")


def pages_with_examples() -> list[Path]:
    pages = sorted(p for p in DOCS.rglob("*.md") if FENCE.search(p.read_text()))
    return [ROOT / "README.md", *pages]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(page: Path) -> list[tuple[int, str]]:
    """Each python block of ``page``, with the line its code starts on."""
    text = page.read_text()
    return [
        (text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in FENCE.finditer(text)
    ]


@pytest.fixture
def service_env(
    redis_url: str, amqp_url: str, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("AMQP_URL", amqp_url)
    monkeypatch.setenv("DATABASE_URL", postgres_dsn)
    monkeypatch.setenv("LEXIGRAM_ENV", "testing")


@pytest.mark.parametrize("page", sorted(SCRIPT_PAGES), ids=page_id)
def test_first_pages_promise_scripts(page: Path) -> None:
    assert SCRIPTS_MARKER in page.read_text()
    assert blocks(page), f"{page_id(page)} has no python example"


def test_pages_needing_top_level_await_say_how_to_run_them() -> None:
    silent = set()
    for page in pages_with_examples():
        text = page.read_text()
        if SCRIPTS_MARKER in text or SAYS_HOW.search(text):
            continue
        if any(_needs_top_level_await(code) for _, code in blocks(page)):
            silent.add(page_id(page))
    assert not silent, (
        f"{sorted(silent)} use top-level await without saying how to run "
        "the examples: link to index.md#running-the-examples"
    )


def _needs_top_level_await(code: str) -> bool:
    try:
        compile(code, "<example>", "exec", dont_inherit=True)
    except SyntaxError:
        return True
    return False


@pytest.mark.parametrize("page", pages_with_examples(), ids=page_id)
def test_page_examples_run(page: Path, service_env: None, tmp_path: Path) -> None:
    if SCRIPTS_MARKER in page.read_text():
        _run_as_scripts(page, tmp_path)
        return
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


def _run_as_scripts(page: Path, tmp_path: Path) -> None:
    """Each block as a file of its own, run by ``python file.py`` in a new process."""
    for line, code in blocks(page):
        script = tmp_path / f"{page.stem.lower()}_line_{line}.py"
        script.write_text("\n" * (line - 1) + code)  # a traceback's line is the page's line
        where = f"{page_id(page)}, the example at line {line}"
        try:
            result = subprocess.run(
                [sys.executable, script.name],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"{where}: still running after 120 s")
        assert result.returncode == 0, (
            f"{where}, saved as a file and run with python, exited with "
            f"{result.returncode}:\n{result.stderr}"
        )


def _run_blocks(page: Path, namespace: dict[str, object], loop: asyncio.AbstractEventLoop) -> None:
    """Blocks with top-level ``await`` run on ``loop``; plain ones (which may call
    ``asyncio.run`` themselves, as a script would) run outside it."""
    for line, code in blocks(page):
        source = "\n" * (line - 1) + code
        compiled = compile(
            source, str(page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
        )
        result = eval(compiled, namespace)
        if asyncio.iscoroutine(result):
            loop.run_until_complete(result)


def test_demo_example_runs_as_a_script(tmp_path: Path) -> None:
    """``examples/demo.py`` (what ``scripts/dev.py demo`` runs) finishes cleanly on its own."""
    env = {k: v for k, v in os.environ.items() if k != "LEXIGRAM_ENV"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "worker pool stopped cleanly" in result.stdout
