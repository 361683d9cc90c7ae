"""Finding the application: a ``module:attribute`` target, or a configuration file."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

from lexigram.tasks.cli._errors import EXIT_CONFIG, EXIT_USAGE, CLIError
from lexigram.tasks.provider import TaskProvider

APP_VARIABLE = "LEXIGRAM_TASKS_APP"
CONFIG_VARIABLE = "LEXIGRAM_TASKS_CONFIG"
DEFAULT_CONFIG = "lexigram.yaml"
DEFAULT_ATTRIBUTE = "provider"
REGISTER_FUNCTION = "register_tasks"


def add_app_arguments(parser: argparse.ArgumentParser, *, positional: bool = False) -> None:
    """The options that say where the application is (for plugins' commands too)."""
    if positional:
        parser.add_argument(
            "app",
            nargs="?",
            metavar="APP",
            help="module:attribute of a TaskProvider, or of a function returning one "
            f"(attribute defaults to '{DEFAULT_ATTRIBUTE}')",
        )
    group = parser.add_argument_group("application")
    group.add_argument(
        "-A",
        "--app",
        dest="app_option",
        metavar="APP",
        help=f"same as APP (default: ${APP_VARIABLE})",
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        help=f"build the provider from a configuration file instead (default: ${CONFIG_VARIABLE}, "
        f"else ./{DEFAULT_CONFIG} if present)",
    )
    group.add_argument(
        "--tasks-module",
        action="append",
        default=[],
        metavar="MODULE[:FUNCTION]",
        help=f"with --config: import MODULE and call FUNCTION(provider) to register its tasks "
        f"(FUNCTION defaults to '{REGISTER_FUNCTION}'); repeatable",
    )


def load_app(args: argparse.Namespace) -> TaskProvider:
    """The provider the options of :func:`add_app_arguments` name."""
    _import_from_working_directory()
    target = getattr(args, "app", None) or getattr(args, "app_option", None)
    config = getattr(args, "config", None)
    tasks_modules: list[str] = getattr(args, "tasks_module", None) or []
    if target and config:
        raise CLIError("give an application (APP / --app) or --config, not both", EXIT_USAGE)
    if target is None and config is None:
        target = os.environ.get(APP_VARIABLE) or None
        config = os.environ.get(CONFIG_VARIABLE) or None
        if target is None and config is None and Path(DEFAULT_CONFIG).is_file():
            config = DEFAULT_CONFIG
    if target:
        if tasks_modules:
            raise CLIError("--tasks-module goes with --config, not with an APP", EXIT_USAGE)
        return provider_from_target(target)
    if config:
        provider = TaskProvider.from_config(config)
        for spec in tasks_modules:
            register_tasks_from(spec, provider)
        return provider
    raise CLIError(
        "no application given: pass APP (e.g. myapp.tasks:provider) or --config FILE "
        f"(or set {APP_VARIABLE} / {CONFIG_VARIABLE})",
        EXIT_USAGE,
    )


def provider_from_target(target: str) -> TaskProvider:
    """Import ``module:attribute``; call it if it is a function; check it is a provider."""
    module_name, _, attribute = target.partition(":")
    obj = _resolve(module_name, attribute or DEFAULT_ATTRIBUTE, target)
    if not isinstance(obj, TaskProvider) and callable(obj):
        obj = obj()
    if not isinstance(obj, TaskProvider):
        raise CLIError(
            f"{target} is a {type(obj).__name__}, not a TaskProvider (or a function returning one)",
            EXIT_CONFIG,
        )
    return obj


def register_tasks_from(spec: str, provider: TaskProvider) -> None:
    """``--tasks-module MODULE[:FUNCTION]``: call ``FUNCTION(provider)``."""
    module_name, _, function = spec.partition(":")
    register = _resolve(module_name, function or REGISTER_FUNCTION, spec)
    if not callable(register):
        raise CLIError(f"{spec} is not a function taking the provider", EXIT_CONFIG)
    register(provider)


def _resolve(module_name: str, attribute: str, shown: str) -> Any:
    parts = [*module_name.split("."), *attribute.split(".")]
    if not all(part.isidentifier() for part in parts):
        raise CLIError(f"{shown!r} is not an import path like 'myapp.tasks:provider'", EXIT_USAGE)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise CLIError(
                f"cannot import {module_name!r}: no module named {exc.name!r} "
                f"(run from the project directory or set PYTHONPATH; cwd is {os.getcwd()})",
                EXIT_CONFIG,
            ) from exc
        raise CLIError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}", EXIT_CONFIG
        ) from exc
    except CLIError:
        raise
    except Exception as exc:
        if _is_lexigram_error(exc):
            raise  # e.g. a ConfigurationError from TaskProvider.from_config at import time
        raise CLIError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}", EXIT_CONFIG
        ) from exc
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(
                f"module {module_name!r} has no attribute {attribute!r}", EXIT_CONFIG
            ) from None
    return obj


def _is_lexigram_error(exc: BaseException) -> bool:
    from lexigram.tasks.errors import TaskError

    return isinstance(exc, TaskError)


def _import_from_working_directory() -> None:
    """Console scripts do not put the working directory on ``sys.path``; ``python -m`` does."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
