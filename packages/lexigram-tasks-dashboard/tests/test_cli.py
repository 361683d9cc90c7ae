"""``lexigram-tasks dashboard APP``: serves the application's dashboard on 127.0.0.1."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

APP = """
from lexigram.tasks import MemoryTaskQueue, TaskProvider

provider = TaskProvider(queue=MemoryTaskQueue(queue_name="cli-demo"))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


COMMAND = [sys.executable, "-m", "lexigram.tasks.cli", "dashboard", "demo_app:provider"]


def test_serves_the_app_on_loopback_until_interrupted(tmp_path: Path) -> None:
    (tmp_path / "demo_app.py").write_text(APP)
    port = free_port()
    server = subprocess.Popen(
        [*COMMAND, "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        page = _get_when_up(f"http://127.0.0.1:{port}/", server)
        assert page.status_code == 200
        assert "cli-demo" in page.text and "read-only" in page.text
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=15)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, stderr
    assert f"dashboard on http://127.0.0.1:{port}/ (read-only)" in stderr


def test_a_bad_trace_url_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "demo_app.py").write_text(APP)
    result = subprocess.run(
        [*COMMAND, "--trace-url", "http://jaeger/trace/"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "trace_url must contain {trace_id}" in result.stderr


def _get_when_up(url: str, server: subprocess.Popen[str]) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            if server.poll() is not None:
                raise AssertionError(f"the server exited: {server.communicate()[1]}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
