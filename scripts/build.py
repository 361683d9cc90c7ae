#!/usr/bin/env python3
"""Build the sdist and wheel of every distribution in packages/ into dist/.

    python3 scripts/build.py                          # every package -> dist/
    python3 scripts/build.py lexigram-tasks-redis     # only the ones named
    python3 scripts/build.py --out /tmp/dist          # somewhere else

Like ``python -m build``, each wheel is built from the unpacked sdist, not
from the source tree, so a file missing from an sdist fails the build here
rather than for a user. Older files of the same distributions are removed
from the output folder first. The build runs hatchling (``[build-system]`` of
every package) with the first Python that has it: this one, else the
repository's ``.venv`` (``python3 scripts/dev.py test`` creates it).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ROOT / "packages"
VENV_PYTHON = ROOT / ".venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def package_dirs() -> list[Path]:
    """Every distribution folder; ``_template`` and other ``_`` folders are not built."""
    return sorted(
        p.parent for p in PACKAGES.glob("*/pyproject.toml") if not p.parent.name.startswith("_")
    )


def hatchling_python() -> str:
    if importlib.util.find_spec("hatchling") is not None:
        return sys.executable
    if VENV_PYTHON.exists():
        return str(VENV_PYTHON)
    sys.exit("scripts/build.py needs hatchling: pip install hatchling (or scripts/dev.py test)")


def hatchling_build(python: str, target: str, project: Path, out: Path) -> Path:
    """Run ``hatchling build -t target`` in ``project``; return the file it made."""
    before = set(out.iterdir())
    subprocess.run(
        [python, "-m", "hatchling", "build", "-t", target, "-d", str(out)],
        cwd=project,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    [made] = set(out.iterdir()) - before
    return made


def build(package: Path, out: Path, python: str) -> list[Path]:
    """The sdist of ``package``, then the wheel built from that sdist."""
    prefix = package.name.replace("-", "_") + "-"
    for old in out.glob(prefix + "*"):
        old.unlink()
    sdist = hatchling_build(python, "sdist", package, out)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist) as archive:
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
                archive.extraction_filter = tarfile.data_filter
            archive.extractall(tmp)
        [unpacked] = Path(tmp).iterdir()
        wheel = hatchling_build(python, "wheel", unpacked, out)
    return [sdist, wheel]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="*", help="distribution names (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="default: dist/")
    args = parser.parse_args(argv)

    known = {p.name: p for p in package_dirs()}
    unknown = sorted(set(args.packages) - set(known))
    if unknown:
        parser.error(f"no package folder for {', '.join(unknown)}; known: {', '.join(known)}")
    chosen = [known[name] for name in args.packages] or list(known.values())

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    python = hatchling_python()
    for package in chosen:
        for made in build(package, out, python):
            print(made.relative_to(ROOT) if made.is_relative_to(ROOT) else made, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
