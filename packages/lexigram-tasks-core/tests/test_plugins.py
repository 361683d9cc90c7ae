"""The plugin loader, optional imports, and the configuration keys that use them.

Core must work without any optional distribution: the DLQ reaches the
configuration through an entry point, and nothing in core imports another
distribution by name.
"""

from __future__ import annotations

import ast
import json
import logging
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from lexigram.tasks import ConfigurationError, MemoryTaskQueue, TaskProvider, plugins
from lexigram.tasks.config import load_config
from lexigram.tasks.optional import import_optional
from lexigram.tasks.plugins import PluginGroup
from lexigram.tasks.ratelimit import LocalRateLimiter
from lexigram.tasks.testing import run_without

CORE_SRC = Path(__file__).resolve().parents[1] / "src" / "lexigram" / "tasks"
OPTIONAL = ("lexigram.tasks.dlq", "lexigram.tasks.redis", "lexigram.tasks.rabbitmq")
OPTIONAL += ("lexigram.tasks.postgres", "lexigram.tasks.scheduler")


# -- core depends on no optional distribution -----------------------------------


def _runtime_imports(tree: ast.AST) -> list[str]:
    """Modules imported outside ``if TYPE_CHECKING:`` blocks."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_core_imports_no_optional_distribution_by_name() -> None:
    offenders = {}
    for path in CORE_SRC.rglob("*.py"):
        imports = _runtime_imports(ast.parse(path.read_text()))
        bad = [m for m in imports if m.startswith(OPTIONAL)]
        if bad:
            offenders[str(path.relative_to(CORE_SRC))] = bad
    assert offenders == {}


# Loads configurations in a fresh interpreter that cannot import the DLQ, as
# if lexigram-tasks-dlq were not installed (its metadata stays: the loader
# finds the entry point and fails to import it, the harder case).
NO_DLQ_PROBE = """
import json
import sys

from lexigram.tasks import ConfigurationError
from lexigram.tasks.config import load_config

report = {}
plain = {"tasks": {"backend": {"type": "memory"}, "global_rate_limit": "5/s"}}
provider = load_config(plain).create_provider()
report["plain"] = type(provider).__name__
try:
    load_config({"tasks": {"backend": {"type": "memory"}, "dead_letter": {"storage": "memory"}}})
except ConfigurationError as exc:
    report["dead_letter"] = str(exc)
report["dlq_imported"] = any(m.startswith("lexigram.tasks.dlq") for m in sys.modules)
print(json.dumps(report))
"""


def test_without_the_dlq_core_loads_configs_and_a_dead_letter_section_gives_the_pip_hint() -> None:
    result = run_without(["lexigram.tasks.dlq"], NO_DLQ_PROBE)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["plain"] == "TaskProvider"
    assert report["dead_letter"] == (
        "<mapping>: tasks.dead_letter: configuration section 'dead_letter' is provided by "
        "lexigram-tasks-dlq, which is not installed: pip install lexigram-tasks-dlq"
    )
    assert report["dlq_imported"] is False


def test_dead_letter_section_is_an_entry_point_of_the_dlq() -> None:
    ep = plugins.CONFIG_SECTIONS.entry_points()["dead_letter"]
    assert ep.dist is not None and ep.dist.name == "lexigram-tasks-dlq"


# -- one loader -----------------------------------------------------------------


def test_builtins_are_entry_points_of_their_distributions() -> None:
    for group in plugins.GROUPS:
        installed = group.entry_points()
        for name, dist in group.provided_by.items():
            ep = installed.get(name)
            assert ep is not None, f"{dist} does not register {name!r} in {group.group}"
            assert ep.dist is not None and ep.dist.name == dist


@pytest.fixture
def fake_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[EntryPoint]:
    """Entry points of the group ``test.group`` (and only those) for the loader."""
    (tmp_path / "good_plugin.py").write_text("class Thing:\n    pass\n")
    (tmp_path / "needs_client.py").write_text("import no_such_client_lib\n")
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    installed: list[EntryPoint] = []
    real = plugins.entry_points

    def fake_entry_points(*, group: str) -> Any:
        return installed if group == "test.group" else real(group=group)

    monkeypatch.setattr(plugins, "entry_points", fake_entry_points)
    return installed


GROUP = PluginGroup(
    "test.group",
    "widget type",
    {"builtin": "lexigram-tasks-core", "absent": "lexigram-tasks-nowhere"},
)


def test_a_third_party_entry_point_loads_like_a_builtin(fake_group: list[EntryPoint]) -> None:
    fake_group.append(EntryPoint("thing", "good_plugin:Thing", "test.group"))
    assert GROUP.names() == ["thing"]
    assert GROUP.load("thing").__name__ == "Thing"


def test_a_name_whose_distribution_is_missing_gives_the_pip_command(
    fake_group: list[EntryPoint],
) -> None:
    with pytest.raises(ConfigurationError) as info:
        GROUP.load("absent")
    assert str(info.value) == (
        "widget type 'absent' is provided by lexigram-tasks-nowhere, which is not installed: "
        "pip install lexigram-tasks-nowhere"
    )
    with pytest.raises(ConfigurationError, match=r"unknown widget type 'other'; registered types"):
        GROUP.load("other")


def test_an_entry_point_extra_names_the_extra_to_install(fake_group: list[EntryPoint]) -> None:
    fake_group.append(EntryPoint("client", "needs_client:Thing [fast]", "test.group"))
    with pytest.raises(ConfigurationError) as info:
        PluginGroup("test.group", "widget type", {"client": "acme-widgets"}).load("client")
    assert str(info.value) == (
        "widget type 'client' needs the 'fast' extra of acme-widgets ('no_such_client_lib' "
        'is not installed): pip install "acme-widgets[fast]"'
    )


def test_a_broken_entry_point_names_its_target_and_error(fake_group: list[EntryPoint]) -> None:
    fake_group.append(EntryPoint("broken", "broken_plugin:Thing", "test.group"))
    with pytest.raises(ConfigurationError) as info:
        GROUP.load("broken")
    assert str(info.value) == (
        "widget type 'broken' (broken_plugin:Thing) could not be loaded: RuntimeError: boom"
    )


def test_import_optional_blames_only_missing_dependencies() -> None:
    with pytest.raises(ImportError, match=r"pip install lexigram-tasks-nowhere$"):
        import_optional("lexigram.tasks.nowhere", "lexigram-tasks-nowhere")
    with pytest.raises(ImportError, match=r'pip install "lexigram-tasks-x\[y\]"$'):
        import_optional("no_such_client_lib", "lexigram-tasks-x", extra="y")
    assert import_optional("json", "unused").dumps(1) == "1"


# -- tasks.rate_limiter ---------------------------------------------------------


def test_rate_limiter_key_builds_the_limiter_through_its_entry_point() -> None:
    config = load_config(
        {
            "tasks": {
                "backend": {"type": "memory"},
                "global_rate_limit": "5/s",
                "rate_limiter": {"type": "local", "burst": 3},
            }
        }
    )
    provider = config.create_provider()
    assert isinstance(provider.rate_limiter, LocalRateLimiter)
    assert provider.rate_limiter.burst == 3


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"type": "nope"}, "tasks.rate_limiter.type: unknown rate limiter type 'nope'"),
        ({"type": "local", "size": 1}, "tasks.rate_limiter.size: unknown key for type 'local'"),
        (
            {"type": "redis", "redis_url": "http://x"},
            "tasks.rate_limiter.redis_url: 'http://x' is not a Redis URL",
        ),
    ],
)
def test_rate_limiter_errors_name_the_key(section: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_config({"tasks": {"backend": {"type": "memory"}, "rate_limiter": section}})
    assert expected in str(info.value)


async def test_a_per_process_rate_limit_says_so_at_start_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = TaskProvider(MemoryTaskQueue(), global_rate_limit="500/s")

    @provider.task(name="ping", rate_limit="2/s")
    async def ping() -> None: ...

    with caplog.at_level(logging.INFO, logger="lexigram.tasks"):
        async with provider:
            pass
    messages = [r.getMessage() for r in caplog.records if "per worker process" in r.getMessage()]
    assert messages == [
        "global_rate_limit 500/s, rate_limit of ping: counted per worker process "
        "(in-process limiter); set tasks.rate_limiter (e.g. type: redis) or rate_limiter= "
        "for a limit shared by every process"
    ]


async def test_a_shared_rate_limiter_is_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    class SharedLimiter:
        async def acquire(self, key: str, rate: Any) -> float:
            return 0.0

    provider = TaskProvider(
        MemoryTaskQueue(), global_rate_limit="500/s", rate_limiter=SharedLimiter()
    )

    @provider.task
    async def ping() -> None: ...

    with caplog.at_level(logging.INFO, logger="lexigram.tasks"):
        async with provider:
            pass
    assert "per worker process" not in caplog.text
