"""``lexigram-tasks postgres migrate``: the command-line side of the migrations.

Core's CLI calls :func:`register` with its sub-parsers; each command sets
``func`` (``args -> exit status``). ``python -m lexigram.tasks.postgres.cli``
runs the same commands on their own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from lexigram.tasks.errors import BackendConnectionError
from lexigram.tasks.postgres._connect import redacted
from lexigram.tasks.postgres.migrate import check_schema_name, latest_version, migrate

#: Environment variables read, in order, when ``--dsn`` is not given.
DSN_VARIABLES = ("LEXIGRAM_POSTGRES_DSN", "DATABASE_URL")


def register(subparsers: Any) -> None:
    """Add the ``postgres`` command group to an ``argparse`` sub-parser collection."""
    group = subparsers.add_parser("postgres", help="PostgreSQL backend commands")
    commands = group.add_subparsers(dest="postgres_command", metavar="COMMAND", required=True)
    command = commands.add_parser(
        "migrate",
        help="create or upgrade the lexigram-tasks tables",
        description=(
            "Apply the SQL migrations shipped with lexigram-tasks-postgres to a schema. "
            "Idempotent and safe to run from several processes at once."
        ),
    )
    command.add_argument(
        "--dsn",
        help=f"postgresql:// URL (default: ${DSN_VARIABLES[0]} or ${DSN_VARIABLES[1]})",
    )
    command.add_argument(
        "--schema", default="lexigram_tasks", help="schema name (default: lexigram_tasks)"
    )
    command.set_defaults(func=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    """Run the migrations named by ``args``; print what happened; return the exit status."""
    dsn = args.dsn or next((os.environ[v] for v in DSN_VARIABLES if os.environ.get(v)), None)
    if not dsn:
        print(
            f"error: no database given: pass --dsn or set {' or '.join(DSN_VARIABLES)}",
            file=sys.stderr,
        )
        return 2
    try:
        check_schema_name(args.schema)
        applied = asyncio.run(migrate(dsn, args.schema))
    except (BackendConnectionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    where = f"schema {args.schema} at {redacted(dsn)}"
    if applied:
        versions = ", ".join(f"{v:04d}" for v in applied)
        print(f"applied migration(s) {versions} to {where}")
    else:
        print(f"{where} is up to date (version {latest_version():04d})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lexigram-tasks")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
