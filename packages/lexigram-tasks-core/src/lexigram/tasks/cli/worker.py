"""``lexigram-tasks worker``: run the worker pools in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from typing import Any

from lexigram.tasks._version import __version__
from lexigram.tasks.cli._app import REGISTER_FUNCTION, add_app_arguments, load_app
from lexigram.tasks.cli._errors import EXIT_CONFIG, EXIT_OK, EXIT_USAGE, CLIError
from lexigram.tasks.cli._metrics import (
    add_metrics_arguments,
    metrics_address,
    serve_supervisor_metrics,
    serve_worker_metrics,
)
from lexigram.tasks.cli._output import error, status
from lexigram.tasks.memory import MemoryTaskQueue
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.supervisor import (
    Supervised,
    Supervisor,
    SupervisorLink,
    supervised_from_environment,
)
from lexigram.tasks.worker import WorkerPool, WorkerSettings
from lexigram.tasks.worker._settings import (
    parse_setting,
    processes_value,
    setting_choices,
    setting_flags,
    setting_help,
    setting_kind,
)

DESCRIPTION = """\
Run the worker pools of a TaskProvider in this process until SIGTERM or
SIGINT. On the first signal the workers stop taking jobs, wait up to
shutdown_timeout for running ones and return the rest to the queue; a second
signal exits at once (unfinished jobs come back when their leases lapse).

With --processes N (or processes: N under tasks.worker) this process is a
supervisor: it starts N such worker processes, starts one again when it dies,
and stops them all gracefully on the first signal; it runs no job itself.

With --metrics-port PORT (or tasks.metrics.port in the file) the metrics are
served for Prometheus at http://HOST:PORT/metrics; under a supervisor, worker
i serves 127.0.0.1:PORT+i and the supervisor serves PORT with all of them.
"""

EXAMPLES = """\
examples:
  lexigram-tasks worker myapp.tasks:provider -c 8
  lexigram-tasks worker myapp.tasks:provider --processes auto -c 50
  lexigram-tasks worker myapp.tasks:provider --metrics-port 9464
  lexigram-tasks worker --config lexigram.yaml --tasks-module myapp.tasks
  lexigram-tasks worker myapp.tasks:create_provider --backends primary,notifications
"""


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run workers until SIGTERM/SIGINT",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    add_app_arguments(parser, positional=True)
    parser.add_argument(
        "-b",
        "--backends",
        action="append",
        metavar="NAMES",
        help="backend names to run workers for, comma-separated or repeated (default: all)",
    )
    parser.add_argument(
        "-Q",
        "--queues",
        action=_QueuesAlias,
        dest="backends",
        metavar="NAMES",
        help="deprecated: the old name of -b/--backends (it takes backend names)",
    )
    add_setting_arguments(parser)
    add_metrics_arguments(parser)
    parser.set_defaults(func=run, default_log_level="info", backends_flag="--backends")


class _QueuesAlias(argparse.Action):
    """``-Q/--queues``, the old name of ``-b/--backends``: appends to the same list and
    records that the old name was used (``run`` warns once, however often it is given)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])
        namespace.backends_flag = "--queues"


def add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`WorkerSettings` field; an unset flag keeps the provider's value."""
    group = parser.add_argument_group(
        "worker settings (default: the provider's, from code or file)"
    )
    for name in WorkerSettings.names():
        group.add_argument(
            *setting_flags(name),
            dest=name,
            type=functools.partial(_setting_value, name),
            metavar=("N|auto" if name == "processes" else "N")
            if setting_kind(name) is int
            else "|".join(setting_choices(name)) or "SECONDS",
            help=f"{setting_help(name)} ({name})",
        )


def setting_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The worker settings given on the command line, by field name."""
    return {n: getattr(args, n) for n in WorkerSettings.names() if getattr(args, n) is not None}


def run(args: argparse.Namespace) -> int:
    supervised = supervised_from_environment()
    if args.backends_flag == "--queues" and supervised is None:
        status("warning: -Q/--queues is deprecated and will be removed; use -b/--backends")
    provider = load_app(args)
    overrides = setting_overrides(args)
    if overrides:
        provider.settings = dataclasses.replace(provider.settings, **overrides)
    backends = _selected_backends(provider, args.backends, args.backends_flag)
    if not provider.tasks:
        raise CLIError(_no_tasks_message(args), EXIT_CONFIG)
    metrics = metrics_address(args)
    if supervised is None and provider.settings.processes > 1:
        return _supervise(args, provider, backends, metrics)
    announcer = _Announcer(provider, describe_app(args), supervised)
    provider.add_service(announcer)
    if supervised is not None:
        provider.add_service(SupervisorLink(provider, supervised))
    endpoint = None if metrics is None else serve_worker_metrics(*metrics, supervised)
    try:
        provider.run(backends)
    finally:
        if endpoint is not None:
            endpoint.close()
    status(f"worker stopped after {announcer.processed()} job(s)")
    return EXIT_OK


def _supervise(
    args: argparse.Namespace,
    provider: TaskProvider,
    backends: list[str],
    metrics: tuple[int, str] | None,
) -> int:
    """Run ``settings.processes`` worker processes under a supervisor; its exit status."""
    settings = provider.settings
    in_memory = [name for name in backends if isinstance(provider.backends[name], MemoryTaskQueue)]
    if in_memory:
        raise CLIError(
            f"backend {in_memory[0]!r} is a MemoryTaskQueue, which lives inside one process: "
            f"with processes {settings.processes} each worker would have an empty queue of its "
            "own; use a shared backend (Redis, PostgreSQL, RabbitMQ) or one process",
            EXIT_CONFIG,
        )
    endpoint = None if metrics is None else serve_supervisor_metrics(*metrics, settings.processes)
    supervisor = Supervisor(
        child_command(args, backends),
        settings.processes,
        shutdown_timeout=settings.shutdown_timeout,
    )
    status(
        f"lexigram-tasks {__version__} supervisor started: app {describe_app(args)}; "
        f"{settings.processes} worker processes of concurrency {settings.worker_count}; "
        f"pid {os.getpid()}"
    )
    try:
        code = supervisor.run()
    finally:
        if endpoint is not None:
            endpoint.close()
    for failure in supervisor.failures:
        error(failure)
    status(f"supervisor stopped (exit status {code})")
    return code


def child_command(args: argparse.Namespace, backends: list[str]) -> list[str]:
    """The command line of one supervised worker: this one, with ``--processes 1``."""
    command = [sys.executable, "-m", "lexigram.tasks.cli", "worker"]
    target = args.app or args.app_option
    if target:
        command.append(target)
    if args.config:
        command += ["--config", args.config]
    for spec in args.tasks_module:
        command += ["--tasks-module", spec]
    if args.backends:
        command += ["--backends", ",".join(backends)]
    for name, value in setting_overrides(args).items():
        if name != "processes":
            command += [setting_flags(name)[-1], str(value)]
    command += ["--processes", "1"]
    if getattr(args, "metrics_port", None) is not None:
        command += ["--metrics-port", str(args.metrics_port)]  # each serves this + its number
    if getattr(args, "debug", False):
        command.append("--debug")
    if getattr(args, "log_level", None):
        command += ["--log-level", args.log_level]
    return command


def describe_app(args: argparse.Namespace) -> str:
    target = args.app or args.app_option
    return (
        str(target)
        if target
        else f"config {args.config or os.environ.get('LEXIGRAM_TASKS_CONFIG') or 'lexigram.yaml'}"
    )


def _no_tasks_message(args: argparse.Namespace) -> str:
    """Why the worker refuses to start with no tasks, and how to register them."""
    problem = (
        f"no tasks are registered ({describe_app(args)}): this worker could run no job, so it "
        "does not start"
    )
    if args.app or args.app_option:
        return (
            f"{problem}; register them with @provider.task in the module that defines the "
            "provider (or in modules it imports)"
        )
    return (
        f"{problem}; pass the module defining the provider and its tasks as APP "
        "(lexigram-tasks worker myapp.tasks:provider), or keep --config and add "
        f"--tasks-module MODULE[:FUNCTION] (FUNCTION(provider) registers them, "
        f"{REGISTER_FUNCTION!r} by default)"
    )


def _selected_backends(provider: TaskProvider, given: list[str] | None, flag: str) -> list[str]:
    """The backends named on the command line (``flag`` is the option used, for errors)."""
    if not given:
        return list(provider.backends)
    names = [name.strip() for item in given for name in item.split(",") if name.strip()]
    unknown = [name for name in names if name not in provider.backends]
    if unknown:
        raise CLIError(
            f"unknown backend {unknown[0]!r} in {flag} (backends: {', '.join(provider.backends)})",
            EXIT_USAGE,
        )
    return names


class _Announcer:
    """A provider service: prints the start-up line once the pools run, and keeps them
    for the final count."""

    def __init__(self, provider: TaskProvider, app: str, supervised: Supervised | None) -> None:
        self.provider = provider
        self.app = app
        self.supervised = supervised
        self.pools: list[WorkerPool] = []

    async def start(self) -> None:
        self.pools = list(self.provider.pools.values())
        served = ", ".join(
            f"{name} ({queue.system}, queue {queue.queue_name!r}: {queue!r})"
            for name, queue in self.provider.backends.items()
            if name in self.provider.pools
        )
        tasks = ", ".join(sorted(self.provider.tasks)) or "none"
        number = "" if self.supervised is None else f" {self.supervised.number}"
        status(
            f"lexigram-tasks {__version__} worker{number} started: app {self.app}; "
            f"backend {served}; concurrency {self.provider.settings.worker_count}; "
            f"pid {os.getpid()}; tasks: {tasks}"
        )

    async def stop(self) -> None:
        if not self.pools:
            return  # never started (e.g. a backend could not be reached)
        running = sum(pool.running for pool in self.pools)
        status(
            f"stopping: waiting up to {self.provider.settings.shutdown_timeout:g}s for {running} "
            "running job(s); a second signal exits at once"
        )

    def processed(self) -> int:
        return sum(pool.processed for pool in self.pools)


def _setting_value(name: str, text: str) -> int | float | str:
    try:
        if name == "processes":
            text = str(processes_value(text))
        return parse_setting(name, text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
