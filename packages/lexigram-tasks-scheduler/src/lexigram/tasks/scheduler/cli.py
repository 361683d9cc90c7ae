"""``lexigram-tasks scheduler`` and ``lexigram-tasks schedule ...``.

Core's CLI calls :func:`register` (entry-point group ``lexigram.tasks.cli``).
``scheduler APP`` runs the scheduler alone, without workers, until
SIGTERM/SIGINT. ``schedule list|next|pause|resume|add|remove`` manage the
templates of the store the application's scheduler uses, so a running
scheduler (any number of them) picks the change up within its
``refresh_interval``.
"""

from __future__ import annotations

import argparse
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, fields
from datetime import datetime
from typing import Any

from lexigram.tasks.cli import (
    EXIT_OK,
    EXIT_USAGE,
    CLIError,
    add_app_arguments,
    common_options,
    load_app,
)
from lexigram.tasks.cli._output import status
from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.scheduler.errors import InvalidScheduleError, TemplateNotFoundError
from lexigram.tasks.scheduler.scheduler import TaskScheduler
from lexigram.tasks.scheduler.store import MemoryTemplateStore, TemplateStore
from lexigram.tasks.scheduler.store import store_from_url as _store_from_url
from lexigram.tasks.scheduler.template import CatchUp, ScheduleOptions, TemplateInfo

#: Read when ``--store`` is not given and the application attached no scheduler.
STORE_VARIABLE = "LEXIGRAM_SCHEDULER_STORE"

_STORE_HELP = (
    "template store: redis://... or postgresql://... URL, or 'memory' (default: "
    f"${STORE_VARIABLE}, else the store of the application's scheduler, else the "
    "primary backend's own Redis/PostgreSQL server)"
)

SCHEDULER_DESCRIPTION = """\
Run the TaskScheduler of an application alone (no workers) until SIGTERM or
SIGINT: it enqueues one job per tick of every template. Run as many as you
like against one Redis or PostgreSQL store: each tick is enqueued once.
"""

SCHEDULE_EXAMPLES = """\
examples:
  lexigram-tasks schedule list myapp.tasks:provider
  lexigram-tasks schedule next myapp.tasks.sync_products -A myapp.tasks:provider -n 3
  lexigram-tasks schedule pause nightly-report -A myapp.tasks:provider
  lexigram-tasks schedule add eu-report --task myapp.tasks.report \\
      --cron "0 9 * * 1-5" --timezone Europe/Berlin --kwargs '{"region": "eu"}' \\
      -A myapp.tasks:provider
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``scheduler`` and ``schedule`` to core's command line."""
    common = common_options()
    runner = subparsers.add_parser(
        "scheduler",
        help="run the cron scheduler alone until SIGTERM/SIGINT",
        description=SCHEDULER_DESCRIPTION,
        epilog="example:\n  lexigram-tasks scheduler myapp.tasks:provider",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    add_app_arguments(runner, positional=True)
    runner.add_argument("--store", metavar="URL", help=_STORE_HELP)
    runner.set_defaults(func=run_scheduler, default_log_level="info")

    group = subparsers.add_parser(
        "schedule",
        help="list, pause, resume, add or remove scheduled templates",
        description="Manage the cron templates of an application's scheduler.",
        epilog=SCHEDULE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = group.add_subparsers(dest="schedule_command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, *, with_name: bool = True) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text, description=help_text, parents=[common])
        if with_name:
            parser.add_argument("name", metavar="NAME", help="template name")
        add_app_arguments(parser, positional=True)
        parser.add_argument("--store", metavar="URL", help=_STORE_HELP)
        return parser

    listing = command(
        "list", "every template: origin, cron, timezone, state, next run", with_name=False
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=run_list)

    upcoming = command("next", "the next run times of a template")
    upcoming.add_argument("-n", "--count", type=int, default=5, help="how many (default 5)")
    upcoming.add_argument("--json", action="store_true", help="print JSON")
    upcoming.set_defaults(func=run_next)

    command("pause", "stop firing a template (every scheduler) until resumed").set_defaults(
        func=run_pause
    )
    command("resume", "fire a paused template again from its next tick").set_defaults(
        func=run_resume
    )
    command("remove", "delete a runtime template").set_defaults(func=run_remove)

    add = command("add", "add a runtime template")
    add.add_argument("--task", required=True, help="registered task name")
    add.add_argument("--cron", required=True, help="cron expression, e.g. '0 */6 * * *'")
    add_option_arguments(add)
    add.set_defaults(func=run_add)


def add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """A ``--option-name`` flag per :class:`ScheduleOptions` field; unset ones keep
    the option's default."""
    hints = typing.get_type_hints(ScheduleOptions)
    for spec in fields(ScheduleOptions):
        kind = _base(hints[spec.name])
        flag = "--" + spec.name.replace("_", "-")
        extra: dict[str, Any] = {}
        if kind is CatchUp:
            extra["choices"] = [c.value for c in CatchUp]
        else:
            extra["type"] = _ARGUMENT_TYPES.get(kind, str)
        shown = spec.default is not MISSING and spec.default not in (None, ())
        default = f" (default {_shown(spec.default)})" if shown else ""
        parser.add_argument(flag, help=spec.metadata["help"] + default, **extra)


def option_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The schedule options given on the command line, by name."""
    given = {name: getattr(args, name) for name in ScheduleOptions.names()}
    return {name: value for name, value in given.items() if value is not None}


def _base(kind: Any) -> Any:
    """``int`` for ``int | None``, ``tuple`` for ``tuple[Any, ...]``, and so on."""
    members = [k for k in typing.get_args(kind) if k is not type(None)]
    if isinstance(kind, types.UnionType) and len(members) == 1:
        kind = members[0]
    return typing.get_origin(kind) or kind


def _shown(value: Any) -> str:
    return str(value.value if isinstance(value, CatchUp) else value)


# -- commands ------------------------------------------------------------------


async def run_scheduler(args: argparse.Namespace) -> int:
    scheduler = scheduler_for(load_app(args), args.store)
    templates = await scheduler.list()
    status(
        f"scheduler started: {len(templates)} template(s) "
        f"({', '.join(t.name for t in templates) or 'none'}); store {scheduler.store!r}; "
        f"pid {os.getpid()}"
    )
    await scheduler.serve()
    status("scheduler stopped")
    return EXIT_OK


async def run_list(args: argparse.Namespace) -> int:
    scheduler = scheduler_for(load_app(args), args.store)
    try:
        infos = await scheduler.list()
    finally:
        await scheduler.disconnect()
    if args.json:
        print(json.dumps([_info_json(i) for i in infos], indent=2))
    elif not infos:
        status("no templates")
    else:
        print(_table(infos))
    return EXIT_OK


async def run_next(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise CLIError("--count must be at least 1", EXIT_USAGE)
    scheduler = scheduler_for(load_app(args), args.store)
    try:
        times = await _known(scheduler.next_runs(args.name, args.count))
    finally:
        await scheduler.disconnect()
    if args.json:
        print(json.dumps([t.isoformat() for t in times]))
    else:
        print("\n".join(t.isoformat() for t in times))
    return EXIT_OK


async def run_pause(args: argparse.Namespace) -> int:
    return await _change(args, "pause", "paused")


async def run_resume(args: argparse.Namespace) -> int:
    return await _change(args, "resume", "resumed")


async def run_remove(args: argparse.Namespace) -> int:
    return await _change(args, "remove", "removed")


async def run_add(args: argparse.Namespace) -> int:
    scheduler = scheduler_for(load_app(args), args.store)
    try:
        template = await scheduler.add(
            args.name,
            args.task,
            args.cron,
            **option_overrides(args),
        )
        [next_run] = template.next_runs(scheduler.clock(), 1)
    except InvalidScheduleError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None
    finally:
        await scheduler.disconnect()
    status(f"added {template.name!r}: {template.cron} ({template.timezone}), next {next_run}")
    return EXIT_OK


# -- helpers -------------------------------------------------------------------


def scheduler_for(provider: TaskProvider, store_url: str | None) -> TaskScheduler:
    """The application's scheduler, or a new one on ``store_url``/$LEXIGRAM_SCHEDULER_STORE."""
    url = store_url or os.environ.get(STORE_VARIABLE) or None
    existing = TaskScheduler.of(provider)
    if existing is not None:
        if store_url:
            raise CLIError(
                "the application already creates a TaskScheduler with its own store; drop --store",
                EXIT_USAGE,
            )
        scheduler = existing
    else:
        store = store_from_url(url) if url else None
        scheduler = TaskScheduler(provider, store=store)
    if isinstance(scheduler.store, MemoryTemplateStore):
        status(
            "note: the template store is in memory (per process): changes made here do not "
            "reach a running scheduler; use a Redis or PostgreSQL store (--store URL)"
        )
    return scheduler


def store_from_url(url: str) -> TemplateStore:
    """A template store from ``redis://``, ``rediss://``, ``postgres(ql)://``, ``memory``
    or a scheme that an installed package registers."""
    try:
        return _store_from_url(url)
    except ConfigurationError as exc:
        raise CLIError(f"--store: {exc}", EXIT_USAGE) from None


async def _change(args: argparse.Namespace, action: str, done: str) -> int:
    scheduler = scheduler_for(load_app(args), args.store)
    try:
        await _known(getattr(scheduler, action)(args.name))
    finally:
        await scheduler.disconnect()
    status(f"{done} {args.name!r}")
    return EXIT_OK


async def _known(awaitable: Any) -> Any:
    try:
        return await awaitable
    except TemplateNotFoundError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None


_COLUMNS = ("NAME", "ORIGIN", "CRON", "TIMEZONE", "TASK", "STATE", "NEXT RUN", "LAST RUN")


def _table(infos: list[TemplateInfo]) -> str:
    rows = [list(_COLUMNS)] + [
        [
            i.name,
            i.origin,
            i.template.cron,
            i.template.timezone,
            i.template.task,
            "paused" if i.paused else "active",
            _when(i.next_run),
            _when(i.last_fire),
        ]
        for i in infos
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _when(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else "-"


def _info_json(info: TemplateInfo) -> dict[str, Any]:
    return {
        **info.template.to_dict(),
        "paused": info.paused,
        "next_run": info.next_run.isoformat() if info.next_run else None,
        "last_fire": info.last_fire.isoformat() if info.last_fire else None,
    }


def _json_list(text: str) -> list[Any]:
    value = _json(text)
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"must be a JSON list, got {text!r}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    value = _json(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


#: How a flag's text becomes an option value, by the option's type.
_ARGUMENT_TYPES: dict[Any, Any] = {
    tuple: _json_list,
    Mapping: _json_object,
    int: int,
    float: float,
}
