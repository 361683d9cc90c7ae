"""``lexigram-tasks worker``'s metrics endpoint: its flags, the ``tasks.metrics`` key,
and starting the endpoint of a worker or of a supervisor (see
``lexigram.tasks.integrations.prometheus``, imported only when asked for)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lexigram.tasks.cli._app import APP_VARIABLE, CONFIG_VARIABLE, DEFAULT_CONFIG
from lexigram.tasks.cli._errors import EXIT_CONFIG, EXIT_USAGE, CLIError
from lexigram.tasks.cli._output import status
from lexigram.tasks.supervisor import Supervised

if TYPE_CHECKING:
    from lexigram.tasks.integrations.prometheus import MetricsEndpoint


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port`` and ``--metrics-host``: the Prometheus endpoint."""
    group = parser.add_argument_group(
        "metrics (default: tasks.metrics in the file; needs lexigram-tasks[prometheus])"
    )
    group.add_argument(
        "--metrics-port",
        type=_metrics_port,
        metavar="PORT",
        help="serve the metrics for Prometheus at http://HOST:PORT/metrics (0: any free port); "
        "with --processes N, worker i serves 127.0.0.1:PORT+i and the supervisor PORT",
    )
    group.add_argument(
        "--metrics-host",
        metavar="HOST",
        help="address the metrics endpoint listens on (default: 127.0.0.1; 0.0.0.0: all)",
    )


def metrics_address(args: argparse.Namespace) -> tuple[int, str] | None:
    """(port, host) of the metrics endpoint asked for, by flag or by ``tasks.metrics``."""
    port, host = getattr(args, "metrics_port", None), getattr(args, "metrics_host", None)
    if port is None:
        source = _config_file(args)
        section = None
        if source is not None:
            from lexigram.tasks.config import load_config

            section = load_config(source).metrics
        if section is None:
            if host is not None:
                raise CLIError(
                    "--metrics-host needs a port: give --metrics-port (or tasks.metrics.port)",
                    EXIT_USAGE,
                )
            return None
        port, host = section.port, host or section.host
    return int(port), host or "127.0.0.1"


def _config_file(args: argparse.Namespace) -> str | None:
    """The configuration file the application comes from, found as ``load_app`` finds it."""
    if args.app or args.app_option:
        return None
    if args.config:
        return str(args.config)
    if os.environ.get(APP_VARIABLE):
        return None
    return os.environ.get(CONFIG_VARIABLE) or (
        DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None
    )


def _prometheus() -> Any:
    """The Prometheus integration, or a usage error naming the extra to install."""
    try:
        from lexigram.tasks.integrations import prometheus
    except ImportError as exc:
        raise CLIError(f"--metrics-port: {exc}", EXIT_CONFIG) from exc
    return prometheus


def serve_worker_metrics(port: int, host: str, supervised: Supervised | None) -> MetricsEndpoint:
    """A worker's endpoint; a supervised worker serves loopback port + its number."""
    prometheus = _prometheus()
    if supervised is not None:
        port, host = prometheus.worker_process_port(port, supervised.number), "127.0.0.1"
    try:
        endpoint: MetricsEndpoint = prometheus.serve_metrics(port, host)
    except OSError as exc:
        raise CLIError(f"{exc.strerror} (--metrics-port)", EXIT_CONFIG) from exc
    number = "" if supervised is None else f" {supervised.number}"
    status(f"worker{number} serves its metrics at {endpoint.url}")
    return endpoint


def serve_supervisor_metrics(port: int, host: str, processes: int) -> MetricsEndpoint:
    """The supervisor's endpoint, serving the metrics of every worker process."""
    prometheus = _prometheus()
    if port == 0:
        raise CLIError(
            f"--metrics-port 0 (any free port) cannot be used with processes {processes}: "
            "the worker processes serve on the ports after the supervisor's",
            EXIT_USAGE,
        )
    ports = {n: prometheus.worker_process_port(port, n) for n in range(1, processes + 1)}
    if max(ports.values()) > 65535:
        raise CLIError(
            f"--metrics-port {port} leaves no room for {processes} worker processes "
            f"(they serve on {port + 1}-{port + processes}, past 65535)",
            EXIT_USAGE,
        )
    taken = [p for p in ports.values() if not prometheus.port_is_free(p)]
    if taken:
        raise CLIError(
            f"metrics port {taken[0]} on 127.0.0.1 is in use: with --metrics-port {port} and "
            f"processes {processes}, worker i serves on {port} + i; choose another port",
            EXIT_CONFIG,
        )
    try:
        endpoint: MetricsEndpoint = prometheus.serve_worker_processes(port, host, ports)
    except OSError as exc:
        raise CLIError(f"{exc.strerror} (--metrics-port)", EXIT_CONFIG) from exc
    status(
        f"supervisor serves the metrics of its {processes} worker processes at {endpoint.url} "
        f"(worker i on 127.0.0.1:{port}+i)"
    )
    return endpoint


def _metrics_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"the metrics port must be a number, got {text!r}"
        ) from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"the metrics port must be 0 to 65535, got {port}")
    return port
