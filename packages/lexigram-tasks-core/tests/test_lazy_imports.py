"""The lazy names of ``lexigram.tasks`` (PEP 562) in the development environment.

requirements-dev.txt installs every package of the repo editable, so each
lazy name must resolve here; a name whose distribution is missing from the
environment is a failure, not a skip.
"""

from __future__ import annotations

import json
from importlib import import_module
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import pytest

import lexigram.tasks
from lexigram.tasks import _LAZY
from lexigram.tasks.testing import run_without

PACKAGES = Path(__file__).resolve().parents[2]


def _cases() -> list[Any]:
    cases = []
    for name, (module_name, dist) in sorted(_LAZY.items()):
        package_dir = PACKAGES / dist
        not_there_yet = pytest.mark.xfail(
            not package_dir.is_dir(),
            reason=f"packages/{dist}/ does not exist yet",
            strict=True,
        )
        cases.append(pytest.param(name, module_name, dist, id=name, marks=not_there_yet))
    return cases


@pytest.mark.parametrize(("name", "module_name", "dist"), _cases())
def test_lazy_name_resolves_from_its_distribution(name: str, module_name: str, dist: str) -> None:
    try:
        distribution(dist)
    except PackageNotFoundError:
        pytest.fail(f"{dist} is not installed: pip install -r requirements-dev.txt", pytrace=False)
    module = import_module(module_name)

    assert getattr(lexigram.tasks, name) is getattr(module, name)
    namespace: dict[str, Any] = {}
    exec(f"from lexigram.tasks import {name}", namespace)
    assert namespace[name] is getattr(module, name)
    assert module.__file__ is not None
    assert Path(module.__file__).is_relative_to(PACKAGES / dist / "src"), (
        f"{module_name} should come from the editable install of packages/{dist}"
    )


def test_lazy_names_are_listed() -> None:
    assert set(_LAZY) <= set(lexigram.tasks.__all__)
    assert set(_LAZY) <= set(dir(lexigram.tasks))


def test_unknown_name_is_an_attribute_error() -> None:
    assert not hasattr(lexigram.tasks, "NoSuchQueue")
    with pytest.raises(ImportError, match="cannot import name 'NoSuchQueue'"):
        exec("from lexigram.tasks import NoSuchQueue", {})


# Runs in a fresh interpreter whose import system refuses the given modules,
# exactly as if their distributions were not installed.
BLOCKED_IMPORT_PROBE = """
import json

import lexigram.tasks

report = {}
for name in sorted(lexigram.tasks._LAZY):
    outcomes = []
    for attempt in ("getattr(lexigram.tasks, name)", f"from lexigram.tasks import {name}"):
        try:
            exec(attempt, {"lexigram": lexigram, "name": name})
        except ImportError as exc:
            outcomes.append({"type": type(exc).__name__, "message": str(exc), "name": exc.name})
        except Exception as exc:
            outcomes.append({"type": type(exc).__name__, "message": str(exc), "name": None})
        else:
            outcomes.append(None)
    report[name] = outcomes
print(json.dumps(report))
"""


def _probe_with_blocked(*modules: str) -> dict[str, list[dict[str, str] | None]]:
    result = run_without(modules, BLOCKED_IMPORT_PROBE)
    assert result.returncode == 0, result.stderr
    report: dict[str, list[dict[str, str] | None]] = json.loads(result.stdout)
    return report


@pytest.fixture(scope="module")
def all_missing() -> dict[str, list[dict[str, str] | None]]:
    return _probe_with_blocked(*sorted({module for module, _ in _LAZY.values()}))


@pytest.mark.parametrize(("name", "dist"), [(n, d) for n, (_, d) in sorted(_LAZY.items())])
def test_missing_distribution_error_names_it(
    all_missing: dict[str, list[dict[str, str] | None]], name: str, dist: str
) -> None:
    for outcome in all_missing[name]:  # attribute access, then from-import
        assert outcome is not None, f"{name} resolved although its module was blocked"
        assert outcome["type"] == "ImportError"
        assert dist in outcome["message"]
        assert f"pip install {dist}" in outcome["message"]


def test_one_missing_distribution_leaves_the_others_alone() -> None:
    report = _probe_with_blocked("lexigram.tasks.redis")

    redis = report["RedisTaskQueue"][1]
    assert redis is not None
    assert "pip install lexigram-tasks-redis" in redis["message"]
    installed = [n for n, (_, d) in _LAZY.items() if d != "lexigram-tasks-redis" and _has(d)]
    assert installed, "no other lazy distribution installed to compare with"
    assert {n: report[n] for n in installed} == {n: [None, None] for n in installed}


@pytest.mark.xfail(
    not (PACKAGES / "lexigram-tasks-redis").is_dir(),
    reason="packages/lexigram-tasks-redis/ does not exist yet",
    strict=True,
)
def test_missing_third_party_library_is_not_blamed_on_the_distribution() -> None:
    # lexigram-tasks-redis is installed but the redis client library is not:
    # the error must name the library, not tell the user to install what they have.
    if not _has("lexigram-tasks-redis"):
        pytest.fail("lexigram-tasks-redis is not installed: pip install -r requirements-dev.txt")
    report = _probe_with_blocked("redis")

    outcome = report["RedisTaskQueue"][1]
    assert outcome is not None
    assert outcome["name"] == "redis"
    assert "pip install lexigram-tasks-redis" not in outcome["message"]


def _has(dist: str) -> bool:
    try:
        distribution(dist)
    except PackageNotFoundError:
        return False
    return True
