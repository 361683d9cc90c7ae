"""``lexigram-tasks worker --metrics-port``: the flags, the ``tasks.metrics`` key,
what a supervised worker is told, and the refusal of an application's meter
provider that has no Prometheus reader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lexigram.tasks.cli import CLIError, build_parser
from lexigram.tasks.cli.worker import child_command, metrics_address

WORKER = [sys.executable, "-m", "lexigram.tasks.cli", "worker"]

APP = """
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from lexigram.tasks import MemoryTaskQueue, TaskProvider

# The application configured its own metrics, without a Prometheus reader.
metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
provider = TaskProvider(queue=MemoryTaskQueue())
provider.task(name="noop")(lambda: None)
"""


def parse(*argv: str) -> object:
    return build_parser().parse_args(["worker", *argv])


def test_the_flags_win_over_the_file_and_a_host_needs_a_port(tmp_path: Path) -> None:
    config = tmp_path / "lexigram.yaml"
    config.write_text("tasks:\n  backend: {type: memory}\n  metrics: {port: 9500, host: 0.0.0.0}\n")
    assert metrics_address(parse("--config", str(config))) == (9500, "0.0.0.0")
    flags = parse("--config", str(config), "--metrics-port", "9600", "--metrics-host", "::1")
    assert metrics_address(flags) == (9600, "::1")
    assert metrics_address(parse("app:provider", "--metrics-port", "9700")) == (
        9700,
        "127.0.0.1",
    )
    assert metrics_address(parse("app:provider")) is None
    with pytest.raises(CLIError, match="--metrics-host needs a port"):
        metrics_address(parse("app:provider", "--metrics-host", "0.0.0.0"))


def test_a_port_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse("app:provider", "--metrics-port", "70000")
    assert exited.value.code == 2
    assert "the metrics port must be 0 to 65535, got 70000" in capsys.readouterr().err


def test_a_supervised_worker_is_given_the_supervisor_port() -> None:
    command = child_command(parse("app:provider", "--processes", "2", "--metrics-port", "9464"), [])
    assert command[-2:] == ["--metrics-port", "9464"]  # it serves 9464 + its number
    assert "--metrics-port" not in child_command(parse("app:provider", "--processes", "2"), [])


def test_an_application_meter_provider_without_a_prometheus_reader_stops_the_worker(
    tmp_path: Path,
) -> None:
    (tmp_path / "ownmetrics.py").write_text(APP)
    result = subprocess.run(
        [*WORKER, "ownmetrics:provider", "--metrics-port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert "error: the application already set a global OpenTelemetry MeterProvider" in (
        result.stderr
    )
    assert "add lexigram.tasks.integrations.prometheus.metric_reader()" in result.stderr
