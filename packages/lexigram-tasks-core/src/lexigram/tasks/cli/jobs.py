"""``lexigram-tasks jobs list|show|cancel``: look at jobs and cancel them."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from lexigram.tasks.cli._app import add_app_arguments, load_app
from lexigram.tasks.cli._errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CLIError
from lexigram.tasks.cli._output import status
from lexigram.tasks.cli._tables import age, moment, table
from lexigram.tasks.control import AttemptOutcome, CancelOutcome, JobAttempt, JobInfo, JobState
from lexigram.tasks.errors import CapabilityNotSupportedError
from lexigram.tasks.memory import MemoryTaskQueue
from lexigram.tasks.provider import TaskProvider

DESCRIPTION = """\
List jobs by state and task, show one job, or cancel jobs. A queued or delayed
job that is cancelled never starts; a running one is told to stop (an async
task gets asyncio.CancelledError; a plain def task sees
current_job().cancel_requested). The backend must support it (the INSPECT and
CANCEL capabilities; see docs/jobs.md).
"""

EXAMPLES = """\
examples:
  lexigram-tasks jobs list myapp.tasks:provider --state running
  lexigram-tasks jobs list --config lexigram.yaml --task reports.build --limit 20 --json
  lexigram-tasks jobs show 7d0b6c4f2e0a4f57a1c3a5f0d2e9b8c1 -A myapp.tasks
  lexigram-tasks jobs cancel 7d0b6c4f2e0a4f57a1c3a5f0d2e9b8c1 5f1e... -A myapp.tasks
"""

#: Largest ``--limit`` (Redis returns at most this many per page anyway).
MAX_LIMIT = 1000

LIST_COLUMNS = ("ID", "STATE", "TASK", "ATTEMPT", "ENQUEUED", "PROGRESS")
ATTEMPT_COLUMNS = ("#", "OUTCOME", "WORKER", "STARTED", "TOOK", "ERROR")

#: What ``jobs cancel`` prints after each id.
OUTCOME_TEXT = {
    CancelOutcome.CANCELLED: "cancelled (it will not run)",
    CancelOutcome.REQUESTED: "cancel requested (its worker is stopping it)",
    CancelOutcome.FINISHED: "already finished (nothing changed)",
    CancelOutcome.NOT_FOUND: "not found",
}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser(
        "jobs",
        help="list, show and cancel jobs",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser(
        "list",
        help="list jobs, a page at a time",
        description="List jobs, a page at a time; filter by state and task name.",
        parents=[common],
    )
    add_app_arguments(listing, positional=True)
    listing.add_argument(
        "--state",
        type=_state,
        metavar="STATE",
        help=f"only jobs in this state ({', '.join(JobState)})",
    )
    listing.add_argument("--task", metavar="NAME", help="only jobs of this task")
    listing.add_argument(
        "--limit",
        type=_limit,
        default=100,
        metavar="N",
        help=f"at most N jobs (default 100, at most {MAX_LIMIT})",
    )
    listing.add_argument(
        "--cursor", metavar="CURSOR", help="continue after the page that printed this cursor"
    )
    listing.add_argument(
        "--backend", metavar="NAME", help="list this backend's jobs (default: the primary)"
    )
    listing.add_argument(
        "--json", action="store_true", help='print {"jobs": [...], "cursor": ...} as JSON'
    )
    listing.set_defaults(func=run_list)

    show = actions.add_parser(
        "show",
        help="show one job",
        description="Show everything known about one job.",
        parents=[common],
    )
    show.add_argument("job_id", metavar="ID", help="the job's id")
    show.add_argument("--json", action="store_true", help="print the job as a JSON object")
    add_app_arguments(show)
    show.set_defaults(func=run_show)

    cancel = actions.add_parser(
        "cancel",
        help="cancel jobs",
        description="Cancel jobs by id and say what happened to each; exit status 1 "
        "if any id was not found.",
        parents=[common],
    )
    cancel.add_argument("job_ids", nargs="+", metavar="ID", help="the jobs' ids")
    cancel.add_argument(
        "--json", action="store_true", help='print [{"id": ..., "outcome": ...}] as JSON'
    )
    add_app_arguments(cancel)
    cancel.set_defaults(func=run_cancel)


async def run_list(args: argparse.Namespace) -> int:
    provider = load_app(args)
    if args.backend is not None and args.backend not in provider.backends:
        raise CLIError(
            f"unknown backend {args.backend!r} (backends: {', '.join(provider.backends)})",
            EXIT_USAGE,
        )
    note_memory_backends(provider)
    try:
        with capability_errors():
            await provider.connect()
            try:
                page = await provider.jobs(
                    state=args.state,
                    task=args.task,
                    limit=args.limit,
                    cursor=args.cursor,
                    backend=args.backend,
                )
            except ValueError as exc:  # a cursor of another listing
                raise CLIError(str(exc), EXIT_USAGE) from None
    finally:
        await provider.disconnect()
    if args.json:
        print(json.dumps({"jobs": [j.to_dict() for j in page.jobs], "cursor": page.cursor}))
        return EXIT_OK
    print(render_list(page.jobs, time.time()))
    if page.cursor is not None:
        # a page may hold fewer than --limit jobs (even none) when filters skip many
        status(f"more jobs may follow: run again with --cursor {page.cursor}")
    elif not page.jobs:
        status("no jobs match")
    return EXIT_OK


async def run_show(args: argparse.Namespace) -> int:
    provider = load_app(args)
    note_memory_backends(provider)
    try:
        with capability_errors():
            await provider.connect()
            info = await provider.get_job(args.job_id)
    finally:
        await provider.disconnect()
    if info is None:
        raise CLIError(f"no job {args.job_id!r} is known to any backend", EXIT_FAILURE)
    print(json.dumps(info.to_dict(), default=repr) if args.json else render_job(info, time.time()))
    return EXIT_OK


async def run_cancel(args: argparse.Namespace) -> int:
    provider = load_app(args)
    note_memory_backends(provider)
    outcomes: dict[str, CancelOutcome] = {}
    try:
        with capability_errors():
            await provider.connect()
            for job_id in dict.fromkeys(args.job_ids):
                outcomes[job_id] = await provider.cancel(job_id)
    finally:
        await provider.disconnect()
    if args.json:
        print(json.dumps([{"id": i, "outcome": o.value} for i, o in outcomes.items()]))
    else:
        for job_id, outcome in outcomes.items():
            print(f"{job_id}: {OUTCOME_TEXT[outcome]}")
    missing = sum(outcome is CancelOutcome.NOT_FOUND for outcome in outcomes.values())
    return EXIT_FAILURE if missing else EXIT_OK


@contextmanager
def capability_errors() -> Iterator[None]:
    """A backend without the capability is the application's limit: exit status 3."""
    try:
        yield
    except CapabilityNotSupportedError as exc:
        raise CLIError(str(exc), EXIT_CONFIG) from None


def note_memory_backends(provider: TaskProvider) -> None:
    if any(isinstance(q, MemoryTaskQueue) for q in provider.backends.values()):
        status("note: in-memory backends are empty in a new process; they show no job")


def render_list(jobs: list[JobInfo], now: float) -> str:
    """The ``jobs list`` table."""
    rows = [
        [
            job.id,
            job.state.value + (" (cancel requested)" if job.cancel_requested else ""),
            job.task,
            f"{job.attempt}/{job.max_attempts}",
            f"{age(job.enqueued_at, now)} ago" if job.enqueued_at is not None else "-",
            _progress(job, width=30),
        ]
        for job in jobs
    ]
    return table(LIST_COLUMNS, rows)


def render_job(job: JobInfo, now: float) -> str:
    """Every field of ``job``, one per line, for people."""
    state = job.state.value + (" (cancel requested)" if job.cancel_requested else "")
    error = None if job.error is None else f"{job.error.type}: {job.error.message}"
    fields: list[tuple[str, str | None]] = [
        ("id", job.id),
        ("state", state),
        ("task", job.task),
        ("queue", job.queue),
        ("attempt", f"{job.attempt} of {job.max_attempts}"),
        ("priority", str(job.priority)),
        ("enqueued", _when(job.enqueued_at, now)),
        ("run at", _when(job.run_at, now)),
        ("started", _when(job.started_at, now)),
        ("finished", _when(job.finished_at, now)),
        ("worker", job.worker_id),
        ("progress", _progress(job)),
        ("meta", _json(dict(job.meta)) if job.meta else None),
        ("error", error),
        ("args", _json(job.args)),
        ("kwargs", _json(job.kwargs)),
        ("result", _json(job.result) if job.has_result else None),
        ("trace id", job.trace_id),
    ]
    width = max(len(name) for name, _ in fields) + 2
    text = "\n".join(f"{name + ':':<{width}}{value or '-'}" for name, value in fields).rstrip()
    if job.attempts:
        text += "\n\nattempts:\n" + render_attempts(job.attempts, now)
    return text


def render_attempts(attempts: Sequence[JobAttempt], now: float) -> str:
    """One row per attempt, oldest first; an error shows its type and first message line."""
    rows = []
    for attempt in attempts:
        error = attempt.error
        message = "-" if error is None else f"{error.type}: {error.message}".splitlines()[0]
        duration = attempt.duration
        timed_out_and_retried = attempt.will_retry and attempt.outcome is AttemptOutcome.TIMED_OUT
        rows.append(
            [
                str(attempt.number),
                attempt.outcome.value + (" (retried)" if timed_out_and_retried else ""),
                attempt.worker_id or "-",
                _when(attempt.started_at, now),
                "-" if duration is None else f"{duration:.3f}s",
                message if len(message) <= 80 else message[:77] + "...",
            ]
        )
    return table(ATTEMPT_COLUMNS, rows, right={0, 4})


def _when(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "-"
    relation = "ago" if timestamp <= now else "from now"
    return f"{moment(timestamp)} ({age(min(timestamp, now), max(timestamp, now))} {relation})"


def _progress(job: JobInfo, width: int | None = None) -> str:
    parts = []
    if job.progress is not None:
        parts.append(f"{job.progress * 100:.0f}%")
    if job.progress_message:
        parts.append(job.progress_message)
    text = " ".join(parts) or "-"
    if width is not None and len(text) > width:
        text = text[: width - 3] + "..."
    return text


def _json(value: Any) -> str:
    return json.dumps(value, default=repr)


def _state(text: str) -> JobState:
    try:
        return JobState(text.lower())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a job state ({', '.join(JobState)})"
        ) from None


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_LIMIT}, got {value}")
    return value
