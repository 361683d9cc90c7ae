"""``lexigram-tasks postgres migrate``: the command-line side of the migrations.

Registered with core's CLI through the ``lexigram.tasks.cli`` entry-point
group (see this package's ``pyproject.toml``): core calls :func:`register`
with its sub-parsers and runs the ``func`` it sets.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from lexigram.tasks.cli import EXIT_OK, EXIT_USAGE, CLIError, add_app_arguments, load_app
from lexigram.tasks.postgres._connect import redacted
from lexigram.tasks.postgres.migrate import check_schema_name, latest_version, migrate
from lexigram.tasks.postgres.queue import PostgresTaskQueue

#: Environment variables read, in order, when neither ``--dsn`` nor an application is given.
DSN_VARIABLES = ("LEXIGRAM_POSTGRES_DSN", "DATABASE_URL")

_EXAMPLES = """\
examples:
  lexigram-tasks postgres migrate --dsn postgresql://app@db/app
  lexigram-tasks postgres migrate --config lexigram.yaml   # every postgres backend in it
  DATABASE_URL=postgresql://app@db/app lexigram-tasks postgres migrate --schema jobs
"""


def register(subparsers: Any) -> None:
    """Add the ``postgres`` command group to core's ``lexigram-tasks`` parser."""
    group = subparsers.add_parser("postgres", help="PostgreSQL backend commands")
    commands = group.add_subparsers(dest="postgres_command", metavar="COMMAND", required=True)
    command = commands.add_parser(
        "migrate",
        help="create or upgrade the lexigram-tasks tables",
        description=(
            "Apply the SQL migrations shipped with lexigram-tasks-postgres.\n"
            "Idempotent, and safe to run from several processes at once.\n\n"
            "The database comes from --dsn, else from the postgres backends of an\n"
            "application (APP / --config), else from "
            f"${DSN_VARIABLES[0]} or ${DSN_VARIABLES[1]}."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("--dsn", help="postgresql:// URL of the database")
    command.add_argument(
        "--schema",
        help="schema name with --dsn or an environment variable (default: lexigram_tasks)",
    )
    add_app_arguments(command, positional=True)
    command.set_defaults(func=run_migrate)


async def run_migrate(args: argparse.Namespace) -> int:
    """Migrate every database ``args`` names; print one line per schema."""
    for dsn, schema in _targets(args):
        applied = await migrate(dsn, schema)
        where = f"schema {schema} at {redacted(dsn)}"
        if applied:
            versions = ", ".join(f"{v:04d}" for v in applied)
            print(f"applied migration(s) {versions} to {where}")
        else:
            print(f"{where} is up to date (version {latest_version():04d})")
    return EXIT_OK


def _targets(args: argparse.Namespace) -> list[tuple[str, str]]:
    schema = args.schema or "lexigram_tasks"
    try:
        check_schema_name(schema)
    except ValueError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None
    if args.dsn:
        return [(args.dsn, schema)]
    if _application_given(args):
        if args.schema:
            raise CLIError("--schema goes with --dsn; an application names its own", EXIT_USAGE)
        queues = [q for q in load_app(args).backends.values() if isinstance(q, PostgresTaskQueue)]
        if not queues:
            raise CLIError("the application has no postgres backend to migrate", EXIT_USAGE)
        return list(dict.fromkeys((q.postgres_dsn, q.schema) for q in queues))
    dsn = next((os.environ[v] for v in DSN_VARIABLES if os.environ.get(v)), None)
    if dsn is None:
        raise CLIError(
            "no database given: pass --dsn, an application (APP or --config), "
            f"or set {' or '.join(DSN_VARIABLES)}",
            EXIT_USAGE,
        )
    return [(dsn, schema)]


def _application_given(args: argparse.Namespace) -> bool:
    from lexigram.tasks.cli._app import APP_VARIABLE, CONFIG_VARIABLE, DEFAULT_CONFIG

    return bool(
        args.app
        or args.app_option
        or args.config
        or os.environ.get(APP_VARIABLE)
        or os.environ.get(CONFIG_VARIABLE)
        or os.path.isfile(DEFAULT_CONFIG)
    )
