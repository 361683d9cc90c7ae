"""``lexigram-tasks workers``: the live worker processes and what they are running."""

from __future__ import annotations

import argparse
import json
import time

from lexigram.tasks.cli._app import add_app_arguments, load_app
from lexigram.tasks.cli._errors import EXIT_OK
from lexigram.tasks.cli._output import status
from lexigram.tasks.cli._tables import age, table
from lexigram.tasks.cli.jobs import capability_errors
from lexigram.tasks.control import WorkerInfo

DESCRIPTION = """\
List the live worker processes: each registers itself when it starts,
refreshes its entry every registry_interval and removes it on a clean exit; a
killed worker disappears when its entry expires. The backend must support it
(the WORKERS capability; see docs/jobs.md).
"""

EXAMPLES = """\
examples:
  lexigram-tasks workers myapp.tasks:provider
  lexigram-tasks workers --config lexigram.yaml --json
"""

COLUMNS = (
    "ID",
    "HOST",
    "PID",
    "BACKENDS",
    "CONCURRENCY",
    "RUNNING",
    "DONE",
    "FAILED",
    "HEARTBEAT",
)
#: Numbers, aligned right.
_RIGHT = frozenset({2, 4, 5, 6, 7, 8})


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser(
        "workers",
        help="list the live workers",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    add_app_arguments(parser, positional=True)
    parser.add_argument(
        "--json", action="store_true", help='print {"time": ..., "workers": [...]} as JSON'
    )
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    provider = load_app(args)
    try:
        with capability_errors():
            await provider.connect()
            workers = await provider.workers()
    finally:
        await provider.disconnect()
    now = time.time()
    if args.json:
        print(json.dumps({"time": round(now, 3), "workers": [w.to_dict() for w in workers]}))
        return EXIT_OK
    print(render(workers, now))
    if not workers:
        status("no live worker")
    return EXIT_OK


def render(workers: list[WorkerInfo], now: float) -> str:
    """The ``workers`` table; HEARTBEAT is the age of the last refresh."""
    rows = [
        [
            w.id,
            w.host,
            str(w.pid),
            ",".join(w.backends),
            str(w.concurrency),
            str(len(w.running)),
            str(w.done),
            str(w.failed),
            f"{age(w.heartbeat_at, now)} ago",
        ]
        for w in workers
    ]
    return table(COLUMNS, rows, right=_RIGHT)
