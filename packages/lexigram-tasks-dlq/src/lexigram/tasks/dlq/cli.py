"""``lexigram-tasks dlq list|show|replay|purge``: the dead letter queue from a shell.

Core's CLI calls :func:`register` through the ``lexigram.tasks.cli`` entry
point. The DLQ is the application's (``APP`` / ``--app myapp.tasks:provider``
or ``--config lexigram.yaml``, whose provider has ``dead_letter=``), or a
storage named by ``--storage-url`` (``redis://...``, ``postgresql://...``);
replaying needs the application, since jobs go back through its backends.
Data goes to stdout (a table, or JSON with ``--json``), messages to stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from lexigram.tasks.cli import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CLIError,
    add_app_arguments,
    load_app,
)
from lexigram.tasks.dlq.filters import FailureFilter
from lexigram.tasks.dlq.queue import DeadLetterQueue
from lexigram.tasks.dlq.record import FailureRecord
from lexigram.tasks.dlq.replay import ReplayReport
from lexigram.tasks.dlq.storage import DeadLetterStorage, MemoryDeadLetterStorage
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.redact import redact_url

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: Filter fields given as a time (ISO or a duration ago) on the command line.
_TIME_FIELDS = frozenset({"since", "until"})


def register(subparsers: Any) -> None:
    """Add the ``dlq`` command group to core's ``argparse`` sub-parsers."""
    group = subparsers.add_parser(
        "dlq",
        help="inspect, replay and purge the dead letter queue",
        description="Inspect, replay and purge the dead letter queue of an application.",
    )
    commands = group.add_subparsers(dest="dlq_command", metavar="COMMAND", required=True)

    listing = commands.add_parser("list", help="list failure records, oldest first")
    _source_arguments(listing)
    _filter_arguments(listing)
    listing.add_argument("--limit", type=_non_negative, default=50, help="at most N (default 50)")
    listing.add_argument("--offset", type=_non_negative, default=0, help="skip the first N")
    listing.add_argument("--newest", action="store_true", help="newest first")
    listing.add_argument("--json", action="store_true", help="print JSON records")
    listing.set_defaults(func=run_list)

    show = commands.add_parser("show", help="show one record: error, traceback, job")
    _source_arguments(show)
    show.add_argument("record_id", metavar="ID", help="the record's id (the failed job's id)")
    show.add_argument("--json", action="store_true", help="print the record as JSON")
    show.set_defaults(func=run_show)

    replay = commands.add_parser(
        "replay",
        help="send jobs back to their original queue",
        description="Send the jobs of the given records (by id, by filter, or --all) back to "
        "their original queue with attempts reset; each record is removed once its job "
        "is enqueued.",
    )
    _source_arguments(replay)
    replay.add_argument("record_ids", nargs="*", metavar="ID", help="records to replay")
    _filter_arguments(replay)
    replay.add_argument("--all", action="store_true", help="every record (or every match)")
    replay.add_argument("--limit", type=_non_negative, help="at most N records")
    replay.add_argument("--json", action="store_true", help="print the outcome as JSON")
    replay.set_defaults(func=run_replay)

    purge = commands.add_parser(
        "purge",
        help="delete records without replaying them",
        description="Delete records (by id, by filter, or --all). Asks for confirmation "
        "unless --yes is given.",
    )
    _source_arguments(purge)
    purge.add_argument("record_ids", nargs="*", metavar="ID", help="records to delete")
    _filter_arguments(purge)
    purge.add_argument("--all", action="store_true", help="every record (or every match)")
    purge.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    purge.add_argument("--json", action="store_true", help="print the outcome as JSON")
    purge.set_defaults(func=run_purge)


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    add_app_arguments(parser, positional=False)
    group = parser.add_argument_group("storage (instead of the application's)")
    group.add_argument(
        "--storage-url",
        metavar="URL",
        help="read records straight from redis://... or postgresql://...",
    )
    group.add_argument("--prefix", default="lexigram:dlq", help="Redis key prefix")
    group.add_argument("--schema", default="lexigram_tasks", help="PostgreSQL schema")


def _filter_arguments(parser: argparse.ArgumentParser) -> None:
    """A ``--field-name`` flag per :class:`FailureFilter` field."""
    group = parser.add_argument_group("filters")
    for spec in fields(FailureFilter):
        help_text: str = spec.metadata["help"]
        if spec.name in _TIME_FIELDS:
            group.add_argument(
                "--" + spec.name,
                type=parse_moment,
                help=f"{help_text}: ISO time, or 30m/2h/7d ago",
            )
        else:
            group.add_argument("--" + spec.name.replace("_", "-"), help=help_text)


# -- commands ------------------------------------------------------------------


async def run_list(args: argparse.Namespace) -> int:
    dlq, provider = _open(args, need_provider=False)
    try:
        where = _filter(args)
        records = await dlq.list(
            where=where, limit=args.limit, offset=args.offset, newest_first=args.newest
        )
        total = await dlq.count(where=where)
        if args.json:
            _print_json([r.to_dict() for r in records])
        else:
            _print_table(records)
        shown = f"{args.offset + 1}-{args.offset + len(records)}" if records else "none"
        status(f"{shown} of {total} record(s) ({where.describe()})")
        return EXIT_OK
    finally:
        await _close(dlq, provider)


async def run_show(args: argparse.Namespace) -> int:
    dlq, provider = _open(args, need_provider=False)
    try:
        record = await dlq.get(args.record_id)
        if record is None:
            raise CLIError(f"the dead letter queue holds no record {args.record_id!r}")
        if args.json:
            _print_json(record.to_dict())
        else:
            print(describe(record))
        return EXIT_OK
    finally:
        await _close(dlq, provider)


async def run_replay(args: argparse.Namespace) -> int:
    where = _filter(args)
    _check_selection(args, where, "replay")
    dlq, provider = _open(args, need_provider=True)
    assert provider is not None
    try:
        if args.record_ids:
            report = ReplayReport()
            for record_id in args.record_ids:
                await _replay_one(dlq, provider, record_id, report)
        else:
            report = await dlq.replay_many(provider, where=where, limit=args.limit)
        if args.json:
            _print_json(
                {"replayed": report.replayed, "skipped": report.skipped, "failed": report.failed}
            )
        else:
            for record_id, job_id in report.replayed.items():
                print(f"replayed {record_id} as job {job_id}")
            for record_id, why in {**report.skipped, **report.failed}.items():
                print(f"not replayed {record_id}: {why}")
        status(str(report))
        return EXIT_FAILURE if report.failed or report.skipped else EXIT_OK
    finally:
        await _close(dlq, provider)


async def _replay_one(
    dlq: DeadLetterQueue, provider: TaskProvider, record_id: str, report: ReplayReport
) -> None:
    from lexigram.tasks.dlq.errors import DeadLetterError

    try:
        handle = await dlq.replay(record_id, provider)
    except DeadLetterError as exc:
        report.failed[record_id] = str(exc)
        return
    if handle is None:
        report.skipped[record_id] = "no such record"
    else:
        report.replayed[record_id] = handle.id


async def run_purge(args: argparse.Namespace) -> int:
    where = _filter(args)
    _check_selection(args, where, "purge")
    dlq, provider = _open(args, need_provider=False)
    try:
        if args.record_ids:
            found = [r for r in [await dlq.get(i) for i in args.record_ids] if r is not None]
            what = f"{len(found)} of the {len(args.record_ids)} given record(s)"
            count = len(found)
        else:
            count = await dlq.count(where=where)
            what = f"{count} record(s) ({where.describe()})"
        if count == 0:
            status("nothing to purge")
            if args.json:
                _print_json({"purged": 0})
            return EXIT_OK
        if not args.yes and not _confirm(f"delete {what} for good?"):
            status("purge cancelled")
            return EXIT_FAILURE
        if args.record_ids:
            purged = sum([await dlq.delete(i) for i in args.record_ids])
        else:
            purged = await dlq.purge(where=where)
        if args.json:
            _print_json({"purged": purged})
        status(f"purged {purged} record(s)")
        return EXIT_OK
    finally:
        await _close(dlq, provider)


# -- helpers -------------------------------------------------------------------


def _open(
    args: argparse.Namespace, *, need_provider: bool
) -> tuple[DeadLetterQueue, TaskProvider | None]:
    url = getattr(args, "storage_url", None)
    provider: TaskProvider | None = None
    app_given = any(getattr(args, k, None) for k in ("app", "app_option", "config"))
    if url is None or need_provider or app_given:
        provider = load_app(args)
    if url is not None:
        return DeadLetterQueue(storage_from_url(url, args)), provider
    assert provider is not None
    dlq = provider.dead_letter
    if not isinstance(dlq, DeadLetterQueue):
        raise CLIError(
            "the application has no dead letter queue: pass dead_letter=DeadLetterQueue(...) "
            "to its TaskProvider, or set tasks.dead_letter in its configuration "
            "(or name a storage with --storage-url)",
            EXIT_CONFIG,
        )
    if isinstance(dlq.storage, MemoryDeadLetterStorage):
        status(
            "warning: this application keeps its dead letters in memory, inside its own "
            "processes; this command cannot see them (use Redis or PostgreSQL storage)"
        )
    return dlq, provider


def storage_from_url(url: str, args: argparse.Namespace) -> DeadLetterStorage:
    """The storage a ``--storage-url`` names, by its scheme."""
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"):
        from lexigram.tasks.dlq.redis import RedisDeadLetterStorage

        return RedisDeadLetterStorage(redis_url=url, prefix=args.prefix)
    if scheme in ("postgres", "postgresql"):
        from lexigram.tasks.dlq.postgres import PostgresDeadLetterStorage

        return PostgresDeadLetterStorage(url, schema=args.schema, auto_migrate=False)
    raise CLIError(
        f"--storage-url {redact_url(url)!r}: use a redis://, rediss://, "
        "redis+sentinel:// or postgresql:// URL",
        EXIT_USAGE,
    )


async def _close(dlq: DeadLetterQueue, provider: TaskProvider | None) -> None:
    await dlq.disconnect()
    if provider is not None:
        await provider.disconnect()


def _filter(args: argparse.Namespace) -> FailureFilter:
    return FailureFilter(**{name: getattr(args, name, None) for name in FailureFilter.names()})


def status(message: str) -> None:
    """A line for people, on stderr (stdout is for data)."""
    print(message, file=sys.stderr, flush=True)


def _check_selection(args: argparse.Namespace, where: FailureFilter, verb: str) -> None:
    if args.record_ids and (args.all or not where.is_empty):
        raise CLIError(f"{verb}: give record ids, or filters / --all, not both", EXIT_USAGE)
    if not args.record_ids and where.is_empty and not args.all:
        raise CLIError(
            f"{verb}: say which records: ids, filters (--task, --error-type, ...) or --all",
            EXIT_USAGE,
        )


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise CLIError(f"{question} - no terminal to ask on: pass --yes to confirm", EXIT_USAGE)
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def parse_moment(text: str) -> float:
    """An ISO time (``2024-05-01T10:00``, naive means UTC) or a duration ago (``30m``, ``7d``)."""
    match = _DURATION.match(text.strip())
    if match:
        return time.time() - float(match[1]) * _SECONDS[match[2]]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO time (2024-05-01T10:00) nor a duration ago (30m, 2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _print_table(records: Sequence[FailureRecord]) -> None:
    rows = [
        (
            r.id,
            _when(r.failed_at),
            r.task or "(not a job)",
            r.queue,
            r.error_type,
            str(r.attempts),
            _one_line(r.error_message, 60),
        )
        for r in records
    ]
    header = ("ID", "FAILED AT", "TASK", "QUEUE", "ERROR", "ATTEMPTS", "MESSAGE")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


def describe(record: FailureRecord) -> str:
    """A record for people: the facts, the traceback, and the job document."""
    lines = [
        f"id:          {record.id}",
        f"task:        {record.task or '(not a valid job)'}",
        f"queue:       {record.queue}",
        f"failed at:   {_when(record.failed_at)} ({record.failed_at:.3f})",
        f"error:       {record.error_type}: {record.error_message}",
        f"reason:      {record.reason}",
        f"attempts:    {record.attempts}",
        f"worker:      {record.worker_id or '(unknown)'}",
        f"source:      {record.source}",
    ]
    if record.trace_context.get("traceparent"):
        lines.append(f"traceparent: {record.trace_context['traceparent']}")
    if record.details:
        lines.append(f"details:     {json.dumps(record.details, sort_keys=True)}")
    if record.traceback:
        lines += ["", record.traceback.rstrip()]
    if record.job is not None:
        lines += ["", "job:", json.dumps(record.job.to_dict(), indent=2, sort_keys=True)]
    elif record.payload is not None:
        lines += ["", "payload (not a valid job):", record.payload.decode("utf-8", "replace")]
    return "\n".join(lines)


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
