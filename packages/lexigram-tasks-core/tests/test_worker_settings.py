"""WorkerSettings is the one declaration of the worker's settings: every field is
documented and reachable from Python, the YAML file and the ``worker`` command line.

The tests read the fields of ``WorkerSettings``, so a new field that is not
documented or not reachable somewhere fails here.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from lexigram.tasks import (
    ConfigurationError,
    MemoryTaskQueue,
    TaskProvider,
    WorkerPool,
    WorkerSettings,
)
from lexigram.tasks.cli import build_parser
from lexigram.tasks.cli.worker import setting_overrides
from lexigram.tasks.config import load_config
from lexigram.tasks.config._models import TasksSection
from lexigram.tasks.worker._settings import (
    WorkerSettingsKeywords,
    setting_choices,
    setting_flags,
    setting_kind,
)

DOCS = Path(__file__).resolve().parents[3] / "docs"
FIELDS = WorkerSettings.names()
# Provider arguments that are objects, so not in the file: configuration.md
# says to pass them to from_config(..., tracer_provider=...).
PYTHON_ONLY = {"tracer_provider", "meter_provider"}


def changed() -> dict[str, Any]:
    """A valid value other than the default for every field."""
    defaults = WorkerSettings()
    values: dict[str, Any] = {}
    for name in FIELDS:
        default = getattr(defaults, name)
        if isinstance(default, str):
            values[name] = next(c for c in setting_choices(name) if c != default)
        else:
            values[name] = default + 3 if isinstance(default, int) else default * 2 + 1.5
    return values


def table(page: str, heading: str) -> dict[str, list[str]]:
    """First-column name -> cells of the first table after ``heading`` in a docs page."""
    text = (DOCS / page).read_text()
    section = text[text.index(heading) :]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        match = re.match(r"\|\s*`([^`]+)`[^|]*\|(.*)\|\s*$", line)
        if match:
            rows[match[1]] = [c.strip() for c in match[2].split("|")]
        elif rows and not line.startswith("|"):
            break
    return rows


def test_workers_page_documents_every_setting_with_its_default_and_flag() -> None:
    rows = table("workers.md", "### Settings")
    defaults = WorkerSettings()
    assert list(rows) == list(FIELDS)
    for name, (default, flag, _meaning) in rows.items():
        if setting_kind(name) is str:
            assert f"`{getattr(defaults, name)}`" in default, name
        else:
            assert float(re.findall(r"`([\d.]+)`", default)[0]) == getattr(defaults, name), name
        assert re.findall(r"`(-[^`]+)`", flag) == list(setting_flags(name)), name


def test_workers_page_other_arguments_are_provider_keywords_and_file_keys() -> None:
    import inspect

    rows = table("workers.md", "The provider's other arguments")
    keywords = inspect.signature(TaskProvider).parameters
    file_keys = set(TasksSection.model_fields)
    for name in rows:
        assert name in keywords, name
        assert name in file_keys or name in PYTHON_ONLY, name


def test_configuration_and_cli_pages_list_every_setting() -> None:
    configuration = table("configuration.md", "### `tasks.worker`")
    assert list(configuration) == list(FIELDS)
    cli = (DOCS / "cli.md").read_text()
    rows = re.findall(r"^\|([^|]+)\| `(\w+)` \|", cli, re.MULTILINE)
    documented = {name: re.findall(r"`(-[-\w]+)", flags) for flags, name in rows}
    assert documented == {name: list(setting_flags(name)) for name in FIELDS}


def test_python_keywords_and_settings_reach_the_provider_and_its_pools() -> None:
    values = changed()
    expected = WorkerSettings(**values)
    by_keywords = TaskProvider(queue=MemoryTaskQueue(), **values)
    by_settings = TaskProvider(queue=MemoryTaskQueue(), settings=expected)
    assert by_keywords.settings == by_settings.settings == expected
    for name, value in values.items():
        assert getattr(by_keywords, name) == value  # the attributes of before still read
        pool = WorkerPool(MemoryTaskQueue(), {}, **{name: value})
        assert getattr(pool.settings, name) == getattr(pool, name) == value


async def test_the_pools_a_provider_starts_run_with_its_settings() -> None:
    provider = TaskProvider(queue=MemoryTaskQueue(), **changed())
    provider.task(name="noop", executor="thread")(lambda: None)
    async with provider:
        [pool] = provider.pools.values()
        assert pool.settings == provider.settings


def test_keywords_win_over_settings_and_assignment_is_validated() -> None:
    provider = TaskProvider(
        queue=MemoryTaskQueue(), settings=WorkerSettings(worker_count=8), worker_count=2
    )
    assert provider.settings.worker_count == 2
    provider.worker_count = 5
    assert provider.settings == WorkerSettings(worker_count=5)
    with pytest.raises(ValueError, match="worker_count must be >= 1, got 0"):
        provider.worker_count = 0
    assert provider.settings.worker_count == 5


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"worker_count": 0}, ValueError, "worker_count must be >= 1, got 0"),
        ({"poll_interval": 0}, ValueError, "poll_interval must be > 0, got 0"),
        ({"lost_lease_retries": -1}, ValueError, "lost_lease_retries must be >= 0"),
        ({"worker_count": 2.5}, TypeError, "worker_count must be an integer, got 2.5"),
        ({"lease_seconds": "30"}, TypeError, "lease_seconds must be a number"),
        ({"workers": 4}, TypeError, "unexpected keyword argument 'workers'"),
    ],
)
def test_bad_values_are_refused_where_they_are_given(
    changes: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        TaskProvider(queue=MemoryTaskQueue(), **changes)
    with pytest.raises(error, match=message):
        WorkerPool(MemoryTaskQueue(), {}, **changes)


def test_yaml_reaches_every_setting(tmp_path: Path) -> None:
    values = changed()
    lines = ["tasks:", "  backend: {type: memory}", "  worker:"]
    lines += [f"    {name}: {value}" for name, value in values.items()]
    path = tmp_path / "lexigram.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert load_config(path).worker == WorkerSettings(**values)
    provider = TaskProvider.from_config(path, shutdown_timeout=1)
    assert provider.settings == WorkerSettings(**{**values, "shutdown_timeout": 1})


def test_yaml_reports_every_bad_setting_with_file_line_and_key(tmp_path: Path) -> None:
    lines = ["tasks:", "  backend: {type: memory}", "  worker:"]
    lines += [f"    {name}: -1" for name in FIELDS] + ["    worker_cuont: 2"]
    path = tmp_path / "lexigram.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigurationError) as caught:
        load_config(path)
    problems = caught.value.problems
    for line, name in enumerate(FIELDS, start=4):
        wanted = f"/lexigram.yaml:{line}: tasks.worker.{name}: Input should be greater than"
        if setting_kind(name) is str:
            wanted = f"/lexigram.yaml:{line}: tasks.worker.{name}: Input should be "
            wanted += " or ".join(repr(c) for c in setting_choices(name))
        elif name in {"shutdown_timeout", "blocked_loop_warning"} or name.endswith(
            ("_retries", "_grace")
        ):
            wanted += " or equal to 0"
        assert any(wanted in p for p in problems), (name, problems)
    typo = f"/lexigram.yaml:{len(FIELDS) + 4}: tasks.worker.worker_cuont: unknown key"
    assert any(typo in p and "did you mean 'worker_count'?" in p for p in problems)


def test_a_worker_setting_beside_the_backend_says_where_it_goes() -> None:
    with pytest.raises(ConfigurationError, match=r"worker settings go under tasks\.worker"):
        load_config({"tasks": {"backend": {"type": "memory"}, "lost_lease_retries": 1}})


def test_the_worker_command_has_a_flag_for_every_setting() -> None:
    values = changed()
    argv = ["worker", "app:provider"]
    for name, value in values.items():
        argv += [setting_flags(name)[-1], str(value)]
    args = build_parser().parse_args(argv)
    assert setting_overrides(args) == values
    assert setting_overrides(build_parser().parse_args(["worker", "app:provider"])) == {}
    # The short flag of before still works.
    assert build_parser().parse_args(["worker", "app:provider", "-c", "4"]).worker_count == 4


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("-c", "0", "worker_count must be >= 1, got 0"),
        ("--lease-seconds", "soon", "lease_seconds must be a number, got 'soon'"),
        ("--lost-lease-retries", "1.5", "lost_lease_retries must be a whole number"),
    ],
)
def test_the_worker_command_refuses_a_bad_setting(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["worker", "app:provider", flag, value])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_settings_are_frozen() -> None:
    settings = WorkerSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.worker_count = 2  # type: ignore[misc]


def test_the_keywords_type_checkers_see_are_exactly_the_fields() -> None:
    # TaskProvider(**worker_settings: Unpack[WorkerSettingsKeywords]): editors and mypy
    # know each keyword and its type, and this keeps the TypedDict in step.
    hints = typing.get_type_hints(WorkerSettingsKeywords)
    assert tuple(hints) == WorkerSettings.names()
    for name in WorkerSettings.names():
        if setting_kind(name) is str:
            assert typing.get_args(hints[name]) == setting_choices(name), name
        else:
            assert hints[name] is setting_kind(name), name
