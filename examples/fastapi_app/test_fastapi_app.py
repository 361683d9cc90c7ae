"""The example served for real: uvicorn runs ``signups.web:app``, ``lexigram-tasks worker``
runs ``signups.tasks:provider`` in another process, both on a real Redis.

A POST that carries a W3C ``traceparent`` enqueues a job; the test follows it
through ``GET /jobs/{id}`` until the worker has run it, then checks that the
worker process ran it and that the request's trace id reached the job and
was current while the task ran.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lexigram.tasks.redis import RedisTaskQueue

pytestmark = pytest.mark.timeout(90)

HERE = Path(__file__).resolve().parent
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


class Started:
    """A process this test started, its output kept in a file for failure messages."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return f"--- {self.name} output ---\n{self.log.read_text(errors='replace')}"

    def alive(self) -> None:
        code = self.process.poll()
        assert code is None, f"{self.name} exited with {code}\n{self.output()}"

    def stop(self) -> None:
        """SIGTERM (both shut down gracefully on it); SIGKILL if still running after 20 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(what: str, check: Callable[[], Any], *processes: Started, timeout: float = 30) -> Any:
    """``check()``'s first truthy value, polled until ``timeout``; fails if a process dies."""
    deadline = time.monotonic() + timeout
    while True:
        for process in processes:
            process.alive()
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(p.output() for p in processes)
            pytest.fail(f"{what}: not within {timeout} s\n{logs}")
        time.sleep(0.1)


@pytest.fixture
def queue_name(redis_url: str) -> Iterator[str]:
    """A queue no other test uses; purged afterwards."""
    name = f"lxfastapi-{uuid.uuid4().hex[:10]}"
    yield name

    async def purge() -> None:
        async with RedisTaskQueue(redis_url=redis_url, queue_name=name) as queue:
            await queue.purge()

    asyncio.run(purge())


@pytest.fixture
def environment(redis_url: str, queue_name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEXIGRAM_TASKS_", "OTEL_"))}
    env.update(REDIS_URL=redis_url, SIGNUPS_QUEUE=queue_name, PYTHONUNBUFFERED="1")
    return env


def test_a_request_enqueues_a_job_that_a_worker_process_runs_in_the_requests_trace(
    environment: dict[str, str], tmp_path: Path
) -> None:
    cli = Path(sys.executable).with_name("lexigram-tasks")
    assert cli.exists(), f"the lexigram-tasks command is not installed beside {sys.executable}"
    port = free_port()
    worker = Started(
        "worker", [str(cli), "worker", "signups.tasks:provider"], environment, tmp_path
    )
    server = Started(
        "uvicorn",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "signups.web:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        environment,
        tmp_path,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            def ready() -> bool:
                try:
                    return client.get("/openapi.json").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for("the server answers", ready, server)
            sent = client.post(
                "/signups", params={"user_id": 42}, headers={"traceparent": TRACEPARENT}
            )
            assert sent.status_code == 202, sent.text
            job_id = sent.json()["job_id"]

            def finished() -> dict[str, Any] | None:
                job: dict[str, Any] = client.get(f"/jobs/{job_id}").raise_for_status().json()
                return job if job["state"] in {"succeeded", "failed", "dead"} else None

            job = wait_for("the job finishes", finished, server, worker)
        assert job["state"] == "succeeded", job
        assert job["result"]["user_id"] == 42
        assert job["result"]["worker_pid"] == worker.pid != server.pid
        assert job["trace_id"] == TRACE_ID  # the traceparent the enqueue wrote into the job
        assert job["result"]["trace_id"] == TRACE_ID  # the trace current while the task ran
    finally:
        server.stop()
        worker.stop()
    # uvicorn ends its graceful shutdown by raising the signal again; the lifespan ran out
    assert server.process.returncode in {0, -signal.SIGTERM}, server.output()
    assert "Application shutdown complete" in server.log.read_text(), server.output()
    assert worker.process.returncode == 0, worker.output()
