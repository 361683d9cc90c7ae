"""Prometheus: serve the lexigram-tasks metrics on an HTTP endpoint to be scraped.

lexigram-tasks records its metrics through the OpenTelemetry API (see
``docs/observability.md``). This module hands them to Prometheus with the
OpenTelemetry Prometheus exporter: a ``PrometheusMetricReader`` on an SDK
``MeterProvider`` fills a ``prometheus_client`` registry, and
prometheus_client's HTTP server serves that registry at ``/metrics``. The
exporter names them the Prometheus way: dots become underscores, counters end
in ``_total``, a unit of seconds adds ``_seconds`` (``{job}`` adds nothing).

Global meter provider. :func:`record_for_prometheus` sets an SDK
``MeterProvider`` with a Prometheus reader as the global one when none is set.
OpenTelemetry lets the global provider be set only once, so one the
application set before is kept: it is used as it is when it has a Prometheus
reader (:func:`metric_reader`), and refused with a
:class:`~lexigram.tasks.ConfigurationError` saying how to add one when it has
none, rather than serving an endpoint without the task metrics.

Several processes. ``lexigram-tasks worker --processes N --metrics-port P``
runs N workers, each with its own counters. Worker *i* serves its metrics on
``127.0.0.1:P+i``, and the supervisor serves ``P``: on each scrape it fetches
every worker's endpoint and serves all of their series, each with the label
``worker_process="i"`` (:func:`serve_worker_processes`). Labels rather than
sums keep a restarted worker's counters from looking like a drop of the
total: Prometheus sees the reset of one series, which ``rate()`` handles.
"""

from __future__ import annotations

import logging
import socket
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import _internal as _metrics_globals

from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.optional import missing_dependency

try:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.parser import text_string_to_metric_families
except ModuleNotFoundError as _exc:  # pragma: no cover - exercised in a subprocess
    _message = missing_dependency(
        _exc,
        "opentelemetry.exporter.prometheus",
        "lexigram-tasks",
        extra="prometheus",
        feature="lexigram.tasks.integrations.prometheus",
    )
    if _message is None:
        raise
    raise ImportError(_message, name=_exc.name) from _exc

logger = logging.getLogger("lexigram.tasks.integrations.prometheus")

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "WORKER_PROCESS_LABEL",
    "MetricsEndpoint",
    "check_port",
    "metric_reader",
    "port_is_free",
    "record_for_prometheus",
    "serve_metrics",
    "serve_worker_processes",
    "worker_process_port",
]

#: The port OpenTelemetry's Prometheus exporter uses by default.
DEFAULT_PORT = 9464
#: Loopback only, unless asked: the endpoint has no authentication.
DEFAULT_HOST = "127.0.0.1"
#: The label the supervisor adds to every series of worker process N.
WORKER_PROCESS_LABEL = "worker_process"
#: The gauge the supervisor adds: 1 for each worker process that answered the scrape.
WORKER_PROCESS_UP = "lexigram_tasks_worker_process_up"
#: How long the supervisor waits for one worker process's endpoint.
WORKER_SCRAPE_TIMEOUT = 5.0


def metric_reader(registry: CollectorRegistry = REGISTRY) -> PrometheusMetricReader:
    """A metric reader that puts a ``MeterProvider``'s metrics into ``registry``.

    Give it to the ``MeterProvider`` you configure yourself
    (``MeterProvider(metric_readers=[metric_reader(), ...])``) to serve the
    lexigram-tasks metrics next to your other exporters.
    """
    return PrometheusMetricReader(registry=registry)


def record_for_prometheus(registry: CollectorRegistry = REGISTRY) -> bool:
    """Make the lexigram-tasks metrics reach ``registry``; True if a provider was set.

    With no global meter provider, an SDK ``MeterProvider`` with a Prometheus
    reader becomes the global one (its resource comes from the standard
    ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` variables). A global
    SDK provider that already has a Prometheus reader is kept (False); one
    without is refused with a :class:`~lexigram.tasks.ConfigurationError`, as
    is a global provider that is not the SDK's.
    """
    if _global_meter_provider_unset():
        metrics.set_meter_provider(
            MeterProvider(metric_readers=[metric_reader(registry)], resource=Resource.create())
        )
        return True
    current = metrics.get_meter_provider()
    if not isinstance(current, MeterProvider):
        raise ConfigurationError(
            f"the global OpenTelemetry meter provider is a {type(current).__name__}, not the "
            "SDK's MeterProvider: the Prometheus exporter cannot read it; set an "
            "opentelemetry.sdk.metrics.MeterProvider with "
            "lexigram.tasks.integrations.prometheus.metric_reader() among its metric_readers"
        )
    readers = _readers_of(current)
    if readers is None:
        logger.warning(
            "cannot tell whether the global MeterProvider has a Prometheus reader (this "
            "opentelemetry-sdk hides them): without one the endpoint serves no task metrics"
        )
    elif not any(isinstance(r, PrometheusMetricReader) for r in readers):
        raise ConfigurationError(
            "the application already set a global OpenTelemetry MeterProvider, and it has no "
            "Prometheus reader, so the endpoint would serve none of the task metrics "
            "(OpenTelemetry allows no reader to be added later): add "
            "lexigram.tasks.integrations.prometheus.metric_reader() to its metric_readers"
        )
    return False


def _global_meter_provider_unset() -> bool:
    try:
        return _metrics_globals._METER_PROVIDER is None
    except AttributeError:  # an opentelemetry-api without the private global
        return type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider"


def _readers_of(provider: MeterProvider) -> tuple[Any, ...] | None:
    """The metric readers of an SDK provider, or None if this SDK version hides them
    (private attributes: the SDK has no public way to list them)."""
    readers = getattr(provider, "_metric_readers", None)
    if readers is None:
        readers = getattr(getattr(provider, "_sdk_config", None), "metric_readers", None)
    return None if readers is None else tuple(readers)


class MetricsEndpoint:
    """A running ``/metrics`` HTTP server (prometheus_client's, in a daemon thread).

    :meth:`close` (or leaving a ``with`` block) stops it and frees the port.
    """

    def __init__(self, server: Any, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        #: The port it listens on (the one chosen when 0 was asked for).
        self.port: int = server.server_port

    @property
    def url(self) -> str:
        """``http://host:port/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> MetricsEndpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MetricsEndpoint({self.url})"


def serve_metrics(
    port: int = DEFAULT_PORT, host: str = DEFAULT_HOST, *, registry: CollectorRegistry = REGISTRY
) -> MetricsEndpoint:
    """Record the metrics for Prometheus (:func:`record_for_prometheus`) and serve
    ``registry`` at ``http://host:port/metrics``; ``port=0`` takes a free port.

    Raises :class:`OSError` naming the address when it cannot be bound.
    """
    check_port(port)
    record_for_prometheus(registry)
    return _serve(registry, port, host)


def serve_worker_processes(
    port: int, host: str, worker_ports: Mapping[int, int]
) -> MetricsEndpoint:
    """The supervisor's endpoint: each scrape fetches ``http://127.0.0.1:<port>/metrics``
    of every worker process (``worker_ports``: number -> port) and serves their
    series together, each labelled ``worker_process="<number>"``, plus
    ``lexigram_tasks_worker_process_up`` (0 for a worker that did not answer)."""
    check_port(port)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_WorkerProcesses(dict(worker_ports)))
    return _serve(registry, port, host)


def worker_process_port(port: int, number: int) -> int:
    """The loopback port worker process ``number`` serves on, under a supervisor on ``port``."""
    return port + number


def check_port(port: int) -> None:
    """Raise ``ValueError`` unless ``port`` is a TCP port number (0: any free port)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"the metrics port must be a number from 0 to 65535, got {port!r}")


def _serve(registry: Any, port: int, host: str) -> MetricsEndpoint:
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
        ) from exc
    return MetricsEndpoint(server, thread, host)


def port_is_free(port: int, host: str = DEFAULT_HOST) -> bool:
    """Whether ``host:port`` can be bound now (a check before starting processes on it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As the HTTP server binds: a port left in TIME_WAIT by a stopped server is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class _WorkerProcesses:
    """A prometheus_client collector gathering the worker processes' endpoints."""

    def __init__(self, worker_ports: dict[int, int]) -> None:
        self.worker_ports = worker_ports

    def collect(self) -> Iterator[Metric]:
        numbers = sorted(self.worker_ports)
        with ThreadPoolExecutor(max_workers=max(1, len(numbers))) as pool:
            texts = list(pool.map(self._fetch, numbers))
        merged: dict[str, Metric] = {}
        up = GaugeMetricFamily(
            WORKER_PROCESS_UP,
            "1 if the worker process answered this scrape, else 0 (starting, or being restarted)",
            labels=[WORKER_PROCESS_LABEL],
        )
        for number, text in zip(numbers, texts, strict=True):
            up.add_metric([str(number)], 0.0 if text is None else 1.0)
            if text is not None:
                _add_labelled(merged, text, str(number))
        yield from merged.values()
        yield up

    def _fetch(self, number: int) -> str | None:
        url = f"http://127.0.0.1:{self.worker_ports[number]}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=WORKER_SCRAPE_TIMEOUT) as response:
                body: bytes = response.read()
        except OSError:
            return None
        return body.decode("utf-8")


def _add_labelled(merged: dict[str, Metric], text: str, number: str) -> None:
    """Add the families of one worker's exposition to ``merged``, labelled with ``number``."""
    for family in text_string_to_metric_families(text):
        into = merged.get(family.name)
        if into is None:
            into = merged[family.name] = Metric(
                family.name, family.documentation, family.type, family.unit
            )
        for sample in family.samples:
            into.add_sample(
                sample.name,
                {**sample.labels, WORKER_PROCESS_LABEL: number},
                sample.value,
                sample.timestamp,
                sample.exemplar,
            )
