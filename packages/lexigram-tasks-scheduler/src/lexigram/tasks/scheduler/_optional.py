"""Optional dependencies, imported only by the store that needs them."""

from __future__ import annotations

from importlib.util import find_spec


def require(module: str, extra: str) -> None:
    """Raise an ImportError with the pip command if ``module`` is not installed."""
    if find_spec(module) is None:
        raise ImportError(
            f"this store needs the {module!r} package: "
            f"pip install 'lexigram-tasks-scheduler[{extra}]'",
            name=module,
        )
