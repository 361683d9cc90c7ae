"""Running code as if some distributions were not installed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

# Prepended to the code: an import hook that refuses the blocked modules and
# their submodules, as a missing distribution would (their metadata, and so
# their entry points, stay visible).
_BLOCKER = """
import importlib.abc as _abc
import sys as _sys

_BLOCKED = {blocked!r}


class _NotInstalled(_abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname in _BLOCKED or fullname.startswith(tuple(b + "." for b in _BLOCKED)):
            raise ModuleNotFoundError(f"No module named {{fullname!r}}", name=fullname)
        return None


_sys.meta_path.insert(0, _NotInstalled())
"""


def run_without(
    blocked: Sequence[str], code: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in which the modules ``blocked`` (and
    their submodules) cannot be imported; ``args`` become ``sys.argv[1:]``.
    Returns the finished process, its output as text."""
    prelude = _BLOCKER.format(blocked=tuple(blocked))
    return subprocess.run(
        [sys.executable, "-c", prelude + code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
