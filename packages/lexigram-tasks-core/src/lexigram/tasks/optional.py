"""Optional imports: import a module, or say which distribution to pip install.

Every place that imports something a user may not have installed (another
lexigram-tasks distribution, or the client library an extra brings) goes
through :func:`import_optional`, so the error always has the same shape.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

__all__ = ["import_optional", "missing_dependency", "pip_install"]


def pip_install(distribution: str, extra: str | None = None) -> str:
    """The command that installs ``distribution`` (with ``extra``): ``pip install ...``."""
    if extra is None:
        return f"pip install {distribution}"
    return f'pip install "{distribution}[{extra}]"'


def missing_dependency(
    exc: ModuleNotFoundError,
    module: str,
    distribution: str,
    *,
    extra: str | None = None,
    feature: str | None = None,
) -> str | None:
    """What to tell the user when importing ``module`` raised ``exc``, or None for a real bug.

    Without ``extra``, ``module`` belongs to ``distribution``: it is missing
    when ``module`` itself (or a parent) is. With ``extra``, ``module`` needs
    what the extra installs: any missing module outside ``module``'s own
    package is blamed on the extra. A module missing inside that package is
    a broken install, which pip install would not fix; None is returned.
    """
    missing = exc.name or ""
    what = feature or module
    itself = bool(missing) and (module == missing or module.startswith(missing + "."))
    if itself and extra is None:
        return (
            f"{what} is provided by {distribution}, which is not installed: "
            f"{pip_install(distribution)}"
        )
    own = module.rpartition(".")[0]
    if missing and extra is not None and (itself or not _within(missing, own)):
        return (
            f"{what} needs the {extra!r} extra of {distribution} ({missing!r} is not "
            f"installed): {pip_install(distribution, extra)}"
        )
    return None


def _within(module: str, package: str) -> bool:
    return bool(package) and (module == package or module.startswith(package + "."))


def import_optional(
    module: str,
    distribution: str,
    *,
    extra: str | None = None,
    feature: str | None = None,
) -> ModuleType:
    """Import ``module``; if a dependency is missing, raise :class:`ImportError` naming
    ``distribution`` (and ``extra``) and the pip command that installs it.

    ``feature`` names what needed the module in the message (default: the
    module). Any other import error propagates unchanged.
    """
    try:
        return import_module(module)
    except ModuleNotFoundError as exc:
        message = missing_dependency(exc, module, distribution, extra=extra, feature=feature)
        if message is None:
            raise
        raise ImportError(message, name=exc.name) from exc
