"""The distributions as users get them: built wheels and sdists, installed by pip.

``scripts/build.py`` builds every package once for this module. The metadata
tests read the built files. The install tests create fresh virtual
environments and let pip resolve the third-party dependencies from the
configured index (PyPI, or a mirror set in pip's configuration), exactly as
``pip install lexigram-tasks-redis`` would, while our own distributions come
from the built files only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lexigram.tasks.registry import BUILTIN_BACKENDS

ROOT = Path(__file__).resolve().parent.parent
PYTHON_REQUIRES = ">=3.11"
EXAMPLE_BACKEND = ROOT / "examples" / "sqlite_backend"


@dataclass(frozen=True)
class Package:
    """One folder of packages/, as its pyproject describes it."""

    folder: Path
    project: dict[str, Any]
    version: str
    #: The folder its wheel installs (``lexigram/tasks/redis``), None for the meta package.
    code: str | None

    @property
    def name(self) -> str:
        name: str = self.project["name"]
        return name

    @property
    def stem(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}"


def _package(folder: Path) -> Package:
    pyproject = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))
    version_file = folder / pyproject["tool"]["hatch"]["version"]["path"]
    namespace: dict[str, str] = {}
    exec(version_file.read_text(encoding="utf-8"), namespace)
    src = folder / "src"
    code = (
        version_file.parent.relative_to(src).as_posix()
        if version_file.is_relative_to(src)
        else None
    )
    return Package(folder, pyproject["project"], namespace["__version__"], code)


PACKAGES = [
    _package(p.parent)
    for p in sorted((ROOT / "packages").glob("*/pyproject.toml"))
    if not p.parent.name.startswith("_")
]
BY_NAME = {p.name: p for p in PACKAGES}
PACKAGE_IDS = [p.name for p in PACKAGES]


def _env() -> dict[str, str]:
    # pip's own configuration (index, mirrors, certificates) is kept on purpose.
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def _run(*args: str | Path, cwd: Path, timeout: float = 240) -> str:
    command = [str(a) for a in args]
    result = subprocess.run(
        command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        pytest.fail(
            f"command failed ({result.returncode}): {' '.join(command)}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}",
            pytrace=False,
        )
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every package built by the documented command, once for this module."""
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, ROOT / "scripts" / "build.py", "--out", out, cwd=ROOT)
    return out


def _wheel(dist: Path, package: Package) -> Path:
    return dist / f"{package.stem}-py3-none-any.whl"


def _wheel_metadata(wheel: Path, name: str) -> tuple[Message, list[str]]:
    with zipfile.ZipFile(wheel) as archive:
        files = archive.namelist()
        metadata = archive.read(f"{name}.dist-info/METADATA").decode()
    return HeaderParser().parsestr(metadata), files


# -- what scripts/build.py makes -------------------------------------------------


def test_build_script_makes_a_wheel_and_an_sdist_of_every_package(dist: Path) -> None:
    expected = set()
    for package in PACKAGES:
        expected |= {f"{package.stem}.tar.gz", f"{package.stem}-py3-none-any.whl"}
    assert {f.name for f in dist.iterdir()} == expected
    assert {p.name for p in PACKAGES} >= {
        "lexigram-tasks",
        "lexigram-tasks-core",
        "lexigram-tasks-redis",
        "lexigram-tasks-rabbitmq",
        "lexigram-tasks-postgres",
        "lexigram-tasks-scheduler",
        "lexigram-tasks-dlq",
    }


@pytest.mark.parametrize("package", PACKAGES, ids=PACKAGE_IDS)
def test_sdist_carries_the_version_of_its_version_file(dist: Path, package: Package) -> None:
    with tarfile.open(dist / f"{package.stem}.tar.gz") as sdist:
        names = set(sdist.getnames())
        member = sdist.extractfile(f"{package.stem}/PKG-INFO")
        assert member is not None
        pkg_info = HeaderParser().parsestr(member.read().decode())
    assert pkg_info["Name"] == package.name
    assert pkg_info["Version"] == package.version
    for needed in ("pyproject.toml", "README.md", "CHANGELOG.md"):
        assert f"{package.stem}/{needed}" in names, f"{needed} is missing from the sdist"


# -- metadata of every wheel -------------------------------------------------------


@pytest.mark.parametrize("package", PACKAGES, ids=PACKAGE_IDS)
def test_wheel_metadata_is_complete(dist: Path, package: Package) -> None:
    meta, _ = _wheel_metadata(_wheel(dist, package), package.stem)
    assert meta["Name"] == package.name
    assert meta["Version"] == package.version
    assert meta["Summary"] == package.project["description"]
    assert len(meta["Summary"]) >= 20
    assert meta["Requires-Python"] == PYTHON_REQUIRES
    assert meta["License-Expression"] == "MIT"
    assert meta["Author"]
    assert meta["Keywords"]
    assert meta["Description-Content-Type"] == "text/markdown"
    assert package.name in meta.get_payload(), "the README is the long description"

    classifiers = set(meta.get_all("Classifier", []))
    assert {
        "Typing :: Typed",
        "Framework :: AsyncIO",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
    } <= classifiers
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    assert any(c.startswith("Intended Audience :: ") for c in classifiers)

    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL", []))
    assert {"Homepage", "Documentation", "Changelog", "Source", "Issues"} <= set(urls)
    assert all(url.startswith("https://") for url in urls.values())
    assert urls["Changelog"].endswith(f"packages/{package.name}/CHANGELOG.md")


@pytest.mark.parametrize("package", PACKAGES, ids=PACKAGE_IDS)
def test_dependencies_on_siblings_accept_the_built_versions(dist: Path, package: Package) -> None:
    meta, _ = _wheel_metadata(_wheel(dist, package), package.stem)
    siblings = [
        Requirement(line)
        for line in meta.get_all("Requires-Dist", [])
        if canonicalize_name(Requirement(line).name) in BY_NAME
    ]
    if package.name != "lexigram-tasks-core":
        assert "lexigram-tasks-core" in {r.name for r in siblings}
    for requirement in siblings:
        built = BY_NAME[requirement.name].version
        assert requirement.specifier.contains(built), f"{requirement} excludes the built {built}"
        assert requirement.specifier, f"{requirement.name} needs a version range"


@pytest.mark.parametrize("package", PACKAGES, ids=PACKAGE_IDS)
def test_wheel_ships_py_typed_and_no_namespace_init(dist: Path, package: Package) -> None:
    _, files = _wheel_metadata(_wheel(dist, package), package.stem)
    code = [f for f in files if not f.startswith(f"{package.stem}.dist-info/")]
    if package.code is None:
        assert code == [], "the meta package is metadata only"
        return
    assert f"{package.code}/py.typed" in code
    assert f"{package.code}/__init__.py" in code
    assert "lexigram/__init__.py" not in code
    assert ("lexigram/tasks/__init__.py" in code) == (package.name == "lexigram-tasks-core")
    assert all(f.startswith(f"{package.code}/") for f in code), "files outside its own folder"


def test_builtin_backend_types_are_declared_by_their_distributions(dist: Path) -> None:
    for type_name, dist_name in BUILTIN_BACKENDS.items():
        package = BY_NAME[dist_name]
        with zipfile.ZipFile(_wheel(dist, package)) as wheel:
            entry_points = wheel.read(f"{package.stem}.dist-info/entry_points.txt").decode()
        group = entry_points.split("[lexigram.tasks.backends]", 1)[1].split("[", 1)[0]
        assert f"{type_name} = " in group, f"{dist_name} does not register type {type_name!r}"


# -- installs in fresh virtual environments ----------------------------------------


class FreshVenv:
    """A new virtual environment; the test environment's pip installs into it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _run(sys.executable, "-m", "venv", "--without-pip", path, cwd=path.parent)
        self.python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    def pip(self, *args: str | Path) -> str:
        return _run(sys.executable, "-m", "pip", "--python", self.python, *args, cwd=self.path)

    def install(self, *args: str | Path) -> dict[str, dict[str, Any]]:
        """``pip install args``; return what pip installed, by canonical name."""
        report = self.path / "pip-report.json"
        self.pip("install", "-q", "--report", report, *args)
        installed = json.loads(report.read_text())["install"]
        return {canonicalize_name(item["metadata"]["name"]): item for item in installed}

    def distributions(self) -> set[str]:
        """What ``pip list`` shows."""
        listed = json.loads(self.pip("list", "--format=json"))
        return {canonicalize_name(item["name"]) for item in listed}

    def run(self, code: str) -> Any:
        """Run ``code`` in the environment; it prints one JSON document."""
        return json.loads(_run(self.python, "-I", "-c", code, cwd=self.path))


def _who_requires(installed: dict[str, dict[str, Any]], name: str) -> list[str]:
    return [
        item["metadata"]["name"]
        for item in installed.values()
        if any(
            canonicalize_name(Requirement(r).name) == name
            for r in item["metadata"].get("requires_dist", [])
        )
    ]


CORE_AND_REDIS_PROBE = """
import json
from lexigram.tasks import RedisTaskQueue, TaskBackendRegistry
try:
    from lexigram.tasks import RabbitMQTaskQueue
except ImportError as exc:
    missing = {"type": type(exc).__name__, "message": str(exc)}
else:
    missing = None
print(json.dumps({
    "redis_queue": RedisTaskQueue.__module__,
    "types": TaskBackendRegistry().types(),
    "rabbitmq": missing,
}))
"""

THIRD_PARTY_BACKEND_PROBE = """
import asyncio, json
from lexigram.tasks import Job, TaskBackendRegistry

async def main():
    registry = TaskBackendRegistry()
    queue = registry.create("sqlite", path="tasks.sqlite3", queue_name="probe")
    async with queue:
        await queue.enqueue(Job(task="probe.task", queue="probe", args=[1]))
        [delivery] = await queue.dequeue()
        await queue.ack(delivery)
        counts = await queue.counts()
    return {"types": registry.types(), "class": type(queue).__name__,
            "args": delivery.job.args, "pending": counts.pending}

print(json.dumps(asyncio.run(main())))
"""


@pytest.mark.timeout(300)
def test_core_and_redis_install_no_other_backend(tmp_path: Path, dist: Path) -> None:
    venv = FreshVenv(tmp_path / "venv")
    ours = [_wheel(dist, BY_NAME[n]) for n in ("lexigram-tasks-core", "lexigram-tasks-redis")]
    installed = venv.install(*ours)

    report = venv.run(CORE_AND_REDIS_PROBE)
    assert report["redis_queue"].startswith("lexigram.tasks.redis")
    assert report["types"] == ["memory", "redis"]
    assert report["rabbitmq"] is not None, "RabbitMQTaskQueue imported without its package"
    assert report["rabbitmq"]["type"] == "ImportError"
    assert "lexigram-tasks-rabbitmq" in report["rabbitmq"]["message"]
    assert "pip install lexigram-tasks-rabbitmq" in report["rabbitmq"]["message"]

    present = venv.distributions()
    assert {"lexigram-tasks-core", "lexigram-tasks-redis", "redis", "rq"} <= present
    for unwanted in ("aio-pika", "aiormq", "asyncpg", "croniter"):
        assert unwanted not in present, (
            f"core + redis installed {unwanted}, required by {_who_requires(installed, unwanted)}"
        )
    assert not {n for n in present if n.startswith("lexigram")} - {
        "lexigram-tasks-core",
        "lexigram-tasks-redis",
    }


@pytest.mark.timeout(300)
def test_installing_a_third_party_backend_registers_its_type(tmp_path: Path, dist: Path) -> None:
    """The tutorial's claim: installing a package with the entry point adds a ``type:``."""
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", wheels,
         cwd=EXAMPLE_BACKEND)  # fmt: skip
    venv = FreshVenv(tmp_path / "venv")
    venv.install(_wheel(dist, BY_NAME["lexigram-tasks-core"]), *wheels.glob("*.whl"))

    report = venv.run(THIRD_PARTY_BACKEND_PROBE)
    assert report == {"types": ["memory", "sqlite"], "class": "SQLiteTaskQueue", "args": [1],
                      "pending": 0}  # fmt: skip


ALL_NAMES_PROBE = """
import json
import lexigram.tasks
resolved = {name: type(getattr(lexigram.tasks, name)).__name__ for name in lexigram.tasks._LAZY}
print(json.dumps({"resolved": resolved, "types": lexigram.tasks.TaskBackendRegistry().types()}))
"""


@pytest.mark.timeout(300)
def test_meta_package_with_all_extra_imports_everything(tmp_path: Path, dist: Path) -> None:
    venv = FreshVenv(tmp_path / "venv")
    meta = _wheel(dist, BY_NAME["lexigram-tasks"])
    # Only the meta wheel is named: its dependencies and extras must bring the rest.
    installed = venv.install("--find-links", dist, f"{meta}[all]")

    for package in PACKAGES:
        assert package.name in installed, f"lexigram-tasks[all] did not install {package.name}"
        url = installed[package.name]["download_info"]["url"]
        assert url == _wheel(dist, package).as_uri(), f"{package.name} came from {url}"
    venv.pip("check")

    report = venv.run(ALL_NAMES_PROBE)
    assert set(report["resolved"]) >= {
        "RedisTaskQueue",
        "CacheBackendResultStore",
        "RabbitMQTaskQueue",
        "PostgresTaskQueue",
        "TaskScheduler",
        "scheduled",
        "DeadLetterQueue",
        "FailureRecord",
    }
    assert report["types"] == sorted(BUILTIN_BACKENDS)

    script = venv.python.parent / ("lexigram-tasks.exe" if os.name == "nt" else "lexigram-tasks")
    assert "worker" in _run(script, "--help", cwd=venv.path)
