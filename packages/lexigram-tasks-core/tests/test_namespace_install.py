"""lexigram.tasks finds subpackages of other distributions, as wheels and as editables.

Each install test builds a fresh virtual environment holding core and a
throwaway distribution made from ``packages/_template``, installed for real
with pip. The environment borrows the dev environment's third-party libraries
(pydantic, opentelemetry, hatchling, pip ...) through a directory of symlinks
that leaves out every lexigram distribution, so nothing of the workspace's
editable installs can leak in: the probes check where each module came from.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ROOT / "packages"
CORE_DIR = PACKAGES / "lexigram-tasks-core"
TEMPLATE_DIR = PACKAGES / "_template"
MARKER = "REPLACE_ME"

THROWAWAY_INIT = '''\
"""A throwaway distribution that plugs into lexigram.tasks."""

from lexigram.tasks import MemoryTaskQueue
from lexigram.tasks.throwaway._version import __version__

VALUE = 42


class ThrowawayTaskQueue(MemoryTaskQueue):
    """A memory queue registered under another type string."""
'''

THROWAWAY_ENTRY_POINT = """
[project.entry-points."lexigram.tasks.backends"]
throwaway = "lexigram.tasks.throwaway:ThrowawayTaskQueue"
"""

# Runs inside the fresh environment and reports what a user would check.
PROBE = """
import importlib.util
import json
from importlib.metadata import version

import lexigram
import lexigram.tasks
import lexigram.tasks.throwaway
from lexigram.tasks import TaskBackendRegistry

registry = TaskBackendRegistry()
try:
    from lexigram.tasks import RedisTaskQueue
except ImportError as exc:
    missing = {"type": type(exc).__name__, "message": str(exc)}
else:
    missing = None
print(json.dumps({
    "lexigram_file": lexigram.__file__,
    "tasks_file": lexigram.tasks.__file__,
    "tasks_path": list(lexigram.tasks.__path__),
    "throwaway_file": lexigram.tasks.throwaway.__file__,
    "value": lexigram.tasks.throwaway.VALUE,
    "types": registry.types(),
    "throwaway_queue": type(registry.create("throwaway", queue_name="probe")).__name__,
    "versions": [version("lexigram-tasks-core"), version("lexigram-tasks-throwaway")],
    "missing": missing,
}))
"""


def instantiate_template(dest: Path, short_name: str, summary: str) -> Path:
    """Copy packages/_template to ``dest``, filling in the markers (docs/development.md)."""
    for source in sorted(TEMPLATE_DIR.rglob("*")):
        relative = source.relative_to(TEMPLATE_DIR)
        if relative == Path("conftest.py") or "__pycache__" in relative.parts:
            continue
        target = dest.joinpath(*(part.replace(MARKER, short_name) for part in relative.parts))
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        text = source.read_text(encoding="utf-8")
        text = text.replace(f"{MARKER}_SUMMARY", summary).replace(MARKER, short_name)
        target.write_text(text, encoding="utf-8")
    return dest


def _env() -> dict[str, str]:
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def _run(*args: str | Path, cwd: Path) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=90
    )
    if result.returncode != 0:
        pytest.fail(
            f"command failed ({result.returncode}): {' '.join(map(str, args))}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}",
            pytrace=False,
        )
    return result.stdout


class FreshVenv:
    """A new venv without pip whose site-packages sees ``third_party`` via a .pth line."""

    def __init__(self, path: Path, third_party: Path) -> None:
        self.path = path
        _run(sys.executable, "-m", "venv", "--without-pip", path, cwd=path.parent)
        self.python = path / ("Scripts" if os.name == "nt" else "bin") / "python"
        purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        self.site = Path(_run(self.python, "-I", "-c", purelib, cwd=path).strip()).resolve()
        # Directories named in a .pth file get no .pth processing of their own,
        # and third_party holds no lexigram files anyway.
        (self.site / "_lexigram_test_third_party.pth").write_text(f"{third_party}\n")

    def pip_install(self, *args: str | Path) -> None:
        _run(self.python, "-I", "-m", "pip", "install", "-q", "--no-deps", "--no-index", *args,
             cwd=self.path)  # fmt: skip

    def probe(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(_run(self.python, "-I", "-c", PROBE, cwd=self.path))
        return result


@pytest.fixture(scope="module")
def third_party(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dev environment's installed libraries, minus every lexigram file."""
    view = tmp_path_factory.mktemp("third-party")
    site_dirs = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    for site_dir in site_dirs:
        for entry in site_dir.iterdir():
            name = entry.name.lower()
            if "lexigram" in name or name.endswith(".pth") or (view / entry.name).exists():
                continue
            (view / entry.name).symlink_to(entry)
    return view


@pytest.fixture(scope="module")
def throwaway_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("src") / "lexigram-tasks-throwaway"
    instantiate_template(project, "throwaway", "A throwaway test distribution.")
    (project / "src/lexigram/tasks/throwaway/__init__.py").write_text(THROWAWAY_INIT)
    with (project / "pyproject.toml").open("a") as pyproject:
        pyproject.write(THROWAWAY_ENTRY_POINT)
    return project


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory, throwaway_dir: Path) -> list[Path]:
    out = tmp_path_factory.mktemp("wheels")
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--wheel-dir", out, CORE_DIR, throwaway_dir,
         cwd=out)  # fmt: skip
    built = sorted(out.glob("*.whl"))
    assert [w.name.split("-")[0] for w in built] == [
        "lexigram_tasks_core",
        "lexigram_tasks_throwaway",
    ]
    return built


def _core_version() -> str:
    namespace: dict[str, str] = {}
    exec((CORE_DIR / "src/lexigram/tasks/_version.py").read_text(encoding="utf-8"), namespace)
    return namespace["__version__"]


def _assert_common(report: dict[str, Any]) -> None:
    assert report["lexigram_file"] is None, "lexigram must stay a namespace package"
    assert report["value"] == 42
    assert report["types"] == ["memory", "throwaway"]
    assert report["throwaway_queue"] == "ThrowawayTaskQueue"
    assert report["versions"] == [_core_version(), "0.1.0"]
    missing = report["missing"]
    assert missing is not None, "RedisTaskQueue imported although lexigram-tasks-redis is absent"
    assert missing["type"] in {"ImportError", "ModuleNotFoundError"}
    assert "lexigram-tasks-redis" in missing["message"]
    assert "pip install lexigram-tasks-redis" in missing["message"]


def test_wheels_ship_no_namespace_init(wheels: list[Path]) -> None:
    core, throwaway = (set(zipfile.ZipFile(w).namelist()) for w in wheels)
    assert "lexigram/tasks/__init__.py" in core
    assert "lexigram/__init__.py" not in core | throwaway
    assert {n for n in throwaway if not n.startswith("lexigram_tasks_throwaway-")} == {
        "lexigram/tasks/throwaway/__init__.py",
        "lexigram/tasks/throwaway/_version.py",
        "lexigram/tasks/throwaway/py.typed",
    }


def test_wheel_install_finds_other_distributions(
    tmp_path: Path, third_party: Path, wheels: list[Path]
) -> None:
    venv = FreshVenv(tmp_path / "venv", third_party)
    venv.pip_install(*wheels)

    report = venv.probe()

    installed = venv.site / "lexigram" / "tasks"
    assert Path(report["tasks_file"]).resolve() == installed / "__init__.py"
    assert Path(report["throwaway_file"]).resolve() == installed / "throwaway" / "__init__.py"
    assert [Path(p).resolve() for p in report["tasks_path"]] == [installed]
    _assert_common(report)


def test_editable_install_finds_other_distributions(
    tmp_path: Path, third_party: Path, throwaway_dir: Path
) -> None:
    if importlib.util.find_spec("editables") is None:
        pytest.fail(
            "hatchling builds editables with the 'editables' library, which must be installed "
            "for --no-build-isolation: pip install -r requirements-dev.txt",
            pytrace=False,
        )
    venv = FreshVenv(tmp_path / "venv", third_party)
    venv.pip_install("--no-build-isolation", "-e", CORE_DIR, "-e", throwaway_dir)

    report = venv.probe()

    core_src = CORE_DIR / "src" / "lexigram" / "tasks"
    throwaway_src = throwaway_dir / "src" / "lexigram" / "tasks"
    assert Path(report["tasks_file"]).resolve() == core_src / "__init__.py"
    assert Path(report["throwaway_file"]).resolve() == throwaway_src / "throwaway" / "__init__.py"
    assert {Path(p).resolve() for p in report["tasks_path"]} == {core_src, throwaway_src}
    assert not (venv.site / "lexigram").exists(), "an editable install must not copy sources"
    _assert_common(report)


# -- the rules of docs/development.md, checked on every package of the repo --

PACKAGE_DIRS = sorted(
    p.parent for p in PACKAGES.glob("*/pyproject.toml") if p.parent.name[0] != "_"
)


@pytest.mark.parametrize("package_dir", PACKAGE_DIRS, ids=lambda p: p.name)
def test_package_follows_namespace_rules(package_dir: Path) -> None:
    pyproject = tomllib.loads((package_dir / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["name"] == package_dir.name
    namespace_root = package_dir / "src" / "lexigram"
    if not namespace_root.exists():  # a metadata-only package such as the meta package
        return
    assert pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["src/lexigram"]
    assert not (namespace_root / "__init__.py").exists(), "lexigram is a namespace package"
    tasks_init = namespace_root / "tasks" / "__init__.py"
    assert tasks_init.exists() == (package_dir == CORE_DIR), (
        "only lexigram-tasks-core ships lexigram/tasks/__init__.py"
    )
    version_file = package_dir / pyproject["tool"]["hatch"]["version"]["path"]
    assert version_file.is_file()


@pytest.mark.parametrize("package_dir", PACKAGE_DIRS, ids=lambda p: p.name)
def test_package_has_no_template_leftovers(package_dir: Path) -> None:
    leftovers = [
        str(path.relative_to(package_dir))
        for path in package_dir.rglob("*")
        if path.is_file()
        and path != Path(__file__).resolve()  # this file names the marker
        and "__pycache__" not in path.parts
        and (MARKER in path.name or MARKER.encode() in path.read_bytes())
    ]
    assert leftovers == [], f"{MARKER} markers left from packages/_template"
    conftest = package_dir / "conftest.py"
    assert not (conftest.exists() and "_template" in conftest.read_text(encoding="utf-8")), (
        "conftest.py of packages/_template was copied: it keeps pytest away from these tests"
    )


def test_template_instantiates_cleanly(tmp_path: Path) -> None:
    project = instantiate_template(tmp_path / "lexigram-tasks-demo", "demo", "Demo package.")
    files = {str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()}
    assert files == {
        "pyproject.toml",
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "src/lexigram/tasks/demo/__init__.py",
        "src/lexigram/tasks/demo/_version.py",
        "src/lexigram/tasks/demo/py.typed",
        "tests/test_demo.py",
    }
    assert not any(MARKER in (project / f).read_text(encoding="utf-8") for f in files)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["name"] == "lexigram-tasks-demo"
    assert pyproject["project"]["description"] == "Demo package."
    assert pyproject["tool"]["hatch"]["version"]["path"] == "src/lexigram/tasks/demo/_version.py"
