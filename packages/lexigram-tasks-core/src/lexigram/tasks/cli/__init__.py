"""``lexigram-tasks``: run workers, enqueue jobs and look at queues from a shell.

Built-in commands are ``worker``, ``enqueue``, ``info``, ``jobs`` and
``workers``; other distributions add theirs (``postgres``, ``schedule``,
``dlq`` ...) through the ``lexigram.tasks.cli`` entry-point group: each entry
point names a ``register(subparsers)`` function that adds its parsers and sets
``func`` (``args -> exit status``, may be ``async``). See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import socket
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from lexigram.tasks._version import __version__
from lexigram.tasks.cli import enqueue, info, jobs, worker, workers
from lexigram.tasks.cli._app import (
    APP_VARIABLE,
    CONFIG_VARIABLE,
    DEFAULT_CONFIG,
    add_app_arguments,
    load_app,
)
from lexigram.tasks.cli._errors import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CLIError,
    redact,
)
from lexigram.tasks.cli._output import error, setup_logging, status
from lexigram.tasks.errors import (
    BackendConnectionError,
    ConfigurationError,
    NoResultStoreError,
    TaskError,
    UnknownTaskError,
)
from lexigram.tasks.plugins import CLI_COMMANDS

__all__ = [
    "APP_VARIABLE",
    "CONFIG_VARIABLE",
    "DEFAULT_CONFIG",
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "PLUGIN_GROUP",
    "CLIError",
    "add_app_arguments",
    "build_parser",
    "common_options",
    "load_app",
    "main",
    "redact",
    "status",
]

#: Entry-point group of CLI plugins: ``name = "package.cli:register"``.
PLUGIN_GROUP = CLI_COMMANDS.group

_BUILTIN_COMMANDS = (worker, enqueue, info, jobs, workers)


def common_options() -> argparse.ArgumentParser:
    """``--debug`` and ``--log-level``, accepted before or after any built-in command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and debug logs",
    )
    common.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        type=str.lower,
        default=argparse.SUPPRESS,
        help="log level (default: info for worker, warning otherwise)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The full parser: built-in commands plus every installed plugin's."""
    parser = argparse.ArgumentParser(
        prog="lexigram-tasks",
        description="Run lexigram-tasks workers, enqueue jobs and inspect queues.",
        epilog="Exit codes: 0 ok, 1 failed, 2 usage error, 3 bad application or "
        "configuration, 4 backend unreachable, 128+N killed by a second signal N.",
        parents=[common_options()],
    )
    parser.add_argument("--version", action="version", version=f"lexigram-tasks {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in _BUILTIN_COMMANDS:
        command.register(subparsers, common_options())
    for _, ep in sorted(CLI_COMMANDS.entry_points().items()):
        try:
            CLI_COMMANDS.load_entry_point(ep)(subparsers)
        except ConfigurationError as exc:  # a broken plugin must not take the others down
            print(f"warning: {exc}", file=sys.stderr)
        except Exception as exc:
            print(
                f"warning: CLI plugin {ep.name!r} ({ep.value}) failed to register: "
                f"{type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (see ``docs/cli.md``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    default_level = getattr(args, "default_log_level", "warning")
    setup_logging("debug" if debug else getattr(args, "log_level", default_level))
    try:
        status = func(args)
        if inspect.isawaitable(status):
            status = asyncio.run(_await(status))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        code, message = _describe(exc)
        if debug:
            print(redact(traceback.format_exc()), end="", file=sys.stderr)
        error(message + ("" if debug or code != EXIT_FAILURE else " (--debug shows the traceback)"))
        return code
    return EXIT_OK if status is None else int(status)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _describe(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one line reporting ``exc``."""
    if isinstance(exc, CLIError):
        return exc.exit_code, str(exc)
    if isinstance(exc, ConfigurationError | NoResultStoreError):
        return EXIT_CONFIG, str(exc)
    if isinstance(exc, UnknownTaskError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, BackendConnectionError):
        return EXIT_UNAVAILABLE, str(exc)
    if isinstance(exc, TaskError):
        return EXIT_FAILURE, str(exc)
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return EXIT_UNAVAILABLE, f"cannot reach the backend: {type(exc).__name__}: {exc}"
    return EXIT_FAILURE, f"{type(exc).__name__}: {exc}"
