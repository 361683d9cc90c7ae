"""``lexigram-tasks enqueue``: send one job by task name."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lexigram.tasks.cli._app import add_app_arguments, load_app
from lexigram.tasks.cli._errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CLIError
from lexigram.tasks.cli._output import status
from lexigram.tasks.errors import TaskFailedError
from lexigram.tasks.memory import MemoryTaskQueue
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.results import MemoryResultStore
from lexigram.tasks.task import EnqueueOptions

DESCRIPTION = """\
Enqueue a job for the task registered as NAME and print its id on stdout.
Arguments are JSON, as on the wire: --args is an array, --kwargs an object.
"""

EXAMPLES = """\
examples:
  lexigram-tasks enqueue myapp.send_email --app myapp.tasks --args '["a@b.c"]' \\
      --kwargs '{"subject": "hi"}'
  lexigram-tasks enqueue reports.build --config lexigram.yaml --delay 60 --priority 5
  JOB=$(lexigram-tasks enqueue myapp.resize --args '["logo.png", 64]')
"""


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser(
        "enqueue",
        help="enqueue one job by task name",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("name", metavar="NAME", help="the task's registered name")
    parser.add_argument(
        "--args", default="[]", metavar="JSON", help="positional arguments, a JSON array"
    )
    parser.add_argument(
        "--kwargs", default="{}", metavar="JSON", help="keyword arguments, a JSON object"
    )
    parser.add_argument("--delay", type=float, metavar="SECONDS", help="run no sooner than this")
    parser.add_argument("--priority", type=int, metavar="0-9", help="higher runs first")
    parser.add_argument("--dedup-key", metavar="KEY", help="at most one pending job per key")
    parser.add_argument("--backend", metavar="NAME", help="backend name (default: the task's)")
    parser.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="wait this long for the result and print it as JSON (needs a result store shared "
        "with the workers; checked before enqueueing)",
    )
    parser.add_argument("--json", action="store_true", help="print the job as a JSON object")
    add_app_arguments(parser)
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    positional = _json_argument(args.args, "--args", list, "'[1, \"a\"]'")
    keywords = _json_argument(args.kwargs, "--kwargs", dict, '\'{"subject": "hi"}\'')
    try:
        options = EnqueueOptions(delay=args.delay, priority=args.priority, dedup_key=args.dedup_key)
    except ValueError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None
    provider = load_app(args)
    if args.backend is not None and args.backend not in provider.backends:
        raise CLIError(
            f"unknown backend {args.backend!r} (backends: {', '.join(provider.backends)})",
            EXIT_USAGE,
        )
    if args.wait is not None:
        _check_can_wait(provider, args.name)
    job = provider.build_job(args.name, positional, keywords, options)
    try:
        handle = await provider.enqueue_job(job, backend=args.backend)
        backend = _backend_name(provider, args.name, args.backend)
        if isinstance(provider.backends[backend], MemoryTaskQueue):
            status(
                f"warning: backend {backend!r} is in memory: the job lives only in this "
                "process and is gone when the command exits"
            )
        if args.json:
            doc = {"id": handle.id, "task": handle.task, "queue": handle.queue, "backend": backend}
            print(json.dumps(doc))
        else:
            print(handle.id)
        sys.stdout.flush()
        if args.wait is None:
            return EXIT_OK
        try:
            result = await handle.result(timeout=args.wait)
        except TaskFailedError as exc:
            status(f"job {handle.id} failed: {exc.error_type}: {exc.error_message}")
            return EXIT_FAILURE
        print(json.dumps(result))
        return EXIT_OK
    finally:
        await provider.disconnect()


def _check_can_wait(provider: TaskProvider, task_name: str) -> None:
    """Refuse ``--wait`` before enqueueing when the result could never be read here,
    so that running the command again does not enqueue the job twice."""
    store = provider.result_store
    if store is None:
        problem = "the provider has no result store"
    elif isinstance(store, MemoryResultStore):
        problem = (
            "the result store is in memory (MemoryResultStore): results written by the "
            "workers are not visible to this command"
        )
    else:
        task = provider.tasks.get(task_name)
        if task is None or task.store_result:
            return
        problem = f"task {task_name!r} is registered with store_result=False"
    raise CLIError(
        f"--wait cannot get a result: {problem}. Nothing was enqueued. Configure a result "
        "store shared with the workers (tasks.result_store, e.g. type: redis, or "
        "TaskProvider(result_store=...)), or leave out --wait",
        EXIT_CONFIG,
    )


def _backend_name(provider: TaskProvider, task_name: str, backend: str | None) -> str:
    """Where the job went: the named backend, else the task's, else the primary."""
    if backend is not None:
        return backend
    task = provider.tasks.get(task_name)
    return task.backend if task is not None and task.backend else provider.primary


def _json_argument(text: str, option: str, kind: type, example: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(
            f"{option} is not valid JSON ({exc.msg}); e.g. {example}", EXIT_USAGE
        ) from None
    if not isinstance(value, kind):
        expected = "array" if kind is list else "object"
        raise CLIError(f"{option} must be a JSON {expected}, e.g. {example}", EXIT_USAGE)
    return value
