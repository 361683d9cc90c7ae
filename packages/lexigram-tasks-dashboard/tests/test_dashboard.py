from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import lexigram.tasks.dashboard


def test_installed_metadata_matches_version_file() -> None:
    # Fails when the editable install is stale (version or entry points changed).
    assert lexigram.tasks.dashboard.__version__ == version("lexigram-tasks-dashboard")


PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]


def test_templates_and_static_files_ship_in_the_wheel(tmp_path: Path) -> None:
    package = Path(__file__).resolve().parents[1]
    subprocess.run(
        [*PIP_WHEEL, "-w", str(tmp_path), str(package)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    [wheel] = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = "lexigram/tasks/dashboard/"
    for name in ("static/dashboard.css", "static/dashboard.js", "templates/base.html"):
        assert shipped + name in names
