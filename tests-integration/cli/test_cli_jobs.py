"""``lexigram-tasks jobs list|show|cancel`` and ``workers`` against real Redis and PostgreSQL.

Every command runs as a subprocess, the way a person or a script runs it; the
application module picks its backend from the environment, so the same
tests run on each backend. A worker runs in a process of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from lexigram.tasks.postgres.migrate import quote_ident
from lexigram.tasks.testing import eventually

pytestmark = pytest.mark.timeout(120)

COMMAND = [sys.executable, "-m", "lexigram.tasks.cli"]

APP = """
import asyncio
import os

from lexigram.tasks import TaskProvider
from lexigram.tasks.current import current_job

if os.environ["BACKEND"] == "redis":
    from lexigram.tasks.redis import RedisTaskQueue

    queue = RedisTaskQueue(redis_url=os.environ["APP_URL"], queue_name=os.environ["QUEUE"])
else:
    from lexigram.tasks.postgres import PostgresTaskQueue

    queue = PostgresTaskQueue(
        os.environ["APP_URL"], os.environ["QUEUE"], schema=os.environ["SCHEMA"], keep_finished=3600
    )

provider = TaskProvider(queue=queue, shutdown_timeout=0.3, worker_count=2, registry_interval=0.5)


@provider.task(name="slow")
async def slow(seconds: float) -> None:
    await current_job().progress(0.5, "half way")
    print("slow started", flush=True)
    await asyncio.sleep(seconds)


@provider.task(name="quick")
async def quick(i: int) -> int:
    return i


@provider.task(name="flaky", max_retries=1, retry_backoff=0.01)
async def flaky() -> None:
    raise ValueError("printer on fire")
"""


@dataclass
class Setup:
    directory: Path
    env: dict[str, str]
    backend: str


@pytest.fixture(params=["redis", "postgres"])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, postgres_dsn: str
) -> Iterator[Setup]:
    """An application directory and environment for one backend, on a queue of its own."""
    backend: str = request.param
    (tmp_path / "app.py").write_text(APP)
    queue = f"lxjobs-{uuid.uuid4().hex[:10]}"
    schema = f"lexigram_test_{uuid.uuid4().hex[:10]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEXIGRAM_TASKS_")}
    env.update(
        BACKEND=backend,
        APP_URL=redis_url if backend == "redis" else postgres_dsn,
        QUEUE=queue,
        SCHEMA=schema,
        PYTHONUNBUFFERED="1",
    )
    yield Setup(tmp_path, env, backend)
    if backend == "redis":
        asyncio.run(_purge_redis(redis_url, queue))
    else:
        asyncio.run(_drop_schema(postgres_dsn, schema))


async def _purge_redis(redis_url: str, queue: str) -> None:
    from lexigram.tasks.redis import RedisTaskQueue

    async with RedisTaskQueue(redis_url=redis_url, queue_name=queue) as q:
        await q.purge()


async def _drop_schema(dsn: str, schema: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await connection.close()


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, self.stderr
        return json.loads(self.stdout)


async def cli(setup: Setup, *args: str) -> Ran:
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        *args,
        cwd=setup.directory,
        env=setup.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


async def enqueue(setup: Setup, task: str, *options: str) -> str:
    sent = await cli(setup, "enqueue", task, "-A", "app", *options)
    assert sent.code == 0, sent.stderr
    return sent.stdout.strip()


async def show(setup: Setup, job_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = (await cli(setup, "jobs", "show", job_id, "-A", "app", "--json")).json()
    return doc


async def listing(setup: Setup, *options: str) -> dict[str, Any]:
    """``jobs list --json``: ``{"jobs": [...], "cursor": ...}``."""
    doc: dict[str, Any] = (await cli(setup, "jobs", "list", "app", *options, "--json")).json()
    return doc


@pytest.fixture
async def worker(setup: Setup) -> AsyncIterator[asyncio.subprocess.Process]:
    """A worker process for the application; stopped with SIGTERM afterwards."""
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        "worker",
        "app",
        cwd=setup.directory,
        env=setup.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_list_show_and_cancel_pending_jobs(setup: Setup) -> None:
    queued = [await enqueue(setup, "quick", "--args", f"[{i}]") for i in range(3)]
    delayed = await enqueue(setup, "quick", "--args", "[9]", "--delay", "3600")

    everything = await listing(setup)
    states = {job["id"]: job["state"] for job in everything["jobs"]}
    assert states == {**dict.fromkeys(queued, "queued"), delayed: "scheduled"}
    assert everything["cursor"] is None

    # two pages of queued jobs, through the cursor
    first = await listing(setup, "--state", "queued", "--limit", "2")
    assert len(first["jobs"]) == 2 and first["cursor"]
    rest = await listing(setup, "--state", "queued", "--limit", "2", "--cursor", first["cursor"])
    assert rest["cursor"] is None
    assert sorted(j["id"] for j in first["jobs"] + rest["jobs"]) == sorted(queued)

    # the table, and the hint naming the next cursor
    table = await cli(setup, "jobs", "list", "app", "--state", "queued", "--limit", "2")
    assert table.code == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "STATE", "TASK", "ATTEMPT", "ENQUEUED", "PROGRESS"]
    assert len(rows) == 2 and all(" queued " in row and " quick " in row for row in rows)
    assert "--cursor " in table.stderr

    info = await show(setup, queued[1])
    assert info["id"] == queued[1] and info["task"] == "quick" and info["args"] == [1]
    assert info["state"] == "queued" and info["queue"] == setup.env["QUEUE"]
    scheduled = await show(setup, delayed)
    assert scheduled["state"] == "scheduled" and scheduled["run_at"] > scheduled["enqueued_at"]
    readable = await cli(setup, "jobs", "show", delayed, "-A", "app")
    assert readable.code == 0, readable.stderr
    fields = dict(line.split(":", 1) for line in readable.stdout.splitlines())
    assert fields["state"].strip() == "scheduled" and fields["task"].strip() == "quick"
    assert "from now" in fields["run at"]

    unknown = await cli(setup, "jobs", "show", "no-such-job", "-A", "app")
    assert unknown.code == 1 and unknown.stdout == ""
    assert "error: no job 'no-such-job' is known" in unknown.stderr

    cancelled = await cli(
        setup, "jobs", "cancel", queued[0], delayed, "nope", "-A", "app", "--json"
    )
    assert cancelled.code == 1  # one id was not found
    assert json.loads(cancelled.stdout) == [
        {"id": queued[0], "outcome": "cancelled"},
        {"id": delayed, "outcome": "cancelled"},
        {"id": "nope", "outcome": "not_found"},
    ]
    assert (await show(setup, queued[0]))["state"] == "cancelled"
    assert (await show(setup, delayed))["state"] == "cancelled"
    again = await cli(setup, "jobs", "cancel", queued[0], "-A", "app")
    assert again.code == 0, again.stderr
    assert again.stdout == f"{queued[0]}: already finished (nothing changed)\n"
    left = await listing(setup, "--state", "queued")
    assert sorted(j["id"] for j in left["jobs"]) == sorted(queued[1:])


async def test_running_job_progress_cancel_and_workers(
    setup: Setup, worker: asyncio.subprocess.Process
) -> None:
    job_id = await enqueue(setup, "slow", "--args", "[60]")

    async def running_with_progress() -> dict[str, Any] | None:
        info = await show(setup, job_id)
        # worker_id may come from the live-worker list, as fresh as registry_interval
        shown = info["state"] == "running" and info["progress"] == 0.5 and info["worker_id"]
        return info if shown else None

    info = await eventually(running_with_progress, 60, interval=0.2)
    assert info["progress_message"] == "half way" and info["attempt"] == 1
    assert info["started_at"] is not None

    async def ours() -> dict[str, Any] | None:
        doc = (await cli(setup, "workers", "app", "--json")).json()
        mine = [w for w in doc["workers"] if w["pid"] == worker.pid]
        return mine[0] if mine and job_id in mine[0]["running"] else None

    entry = await eventually(ours, 30, interval=0.2)
    assert entry["id"] == info["worker_id"] and entry["concurrency"] == 2
    assert entry["heartbeat_at"] >= entry["started_at"]
    table = await cli(setup, "workers", "app")
    assert table.code == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    columns = ["ID", "HOST", "PID", "BACKENDS", "CONCURRENCY", "RUNNING", "DONE", "FAILED"]
    assert header.split() == [*columns, "HEARTBEAT"]
    [row] = [row for row in rows if row.startswith(entry["id"] + " ")]
    assert f" {worker.pid} " in row and row.endswith(" ago")

    listed = await listing(setup, "--state", "running")
    assert [j["id"] for j in listed["jobs"]] == [job_id]
    running_table = await cli(setup, "jobs", "list", "app", "--state", "running")
    assert "50% half way" in running_table.stdout

    cancel = await cli(setup, "jobs", "cancel", job_id, "-A", "app")
    assert cancel.code == 0, cancel.stderr
    assert cancel.stdout == f"{job_id}: cancel requested (its worker is stopping it)\n"

    async def cancelled() -> bool:
        return (await show(setup, job_id))["state"] == "cancelled"

    await eventually(cancelled, 30, interval=0.2)

    worker.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(worker.wait(), 20) == 0

    async def deregistered() -> bool:
        doc = (await cli(setup, "workers", "app", "--json")).json()
        return all(w["pid"] != worker.pid for w in doc["workers"])

    await eventually(deregistered, 10, interval=0.2)


async def test_show_lists_every_attempt(setup: Setup, worker: asyncio.subprocess.Process) -> None:
    job_id = await enqueue(setup, "flaky")

    async def failed() -> dict[str, Any] | None:
        info = await show(setup, job_id)
        return info if info["state"] == "failed" else None

    info = await eventually(failed, 60, interval=0.2)
    outcomes = [(a["number"], a["outcome"], a["error"]["type"]) for a in info["attempts"]]
    assert outcomes == [(1, "retrying", "ValueError"), (2, "failed", "ValueError")]
    assert "printer on fire" in info["attempts"][0]["error"]["traceback"]
    worker_id = info["attempts"][0]["worker_id"]
    assert worker_id and info["worker_id"] == worker_id

    readable = await cli(setup, "jobs", "show", job_id, "-A", "app")
    assert readable.code == 0, readable.stderr
    _, attempts = readable.stdout.split("\nattempts:\n")
    header, *rows = attempts.splitlines()
    assert header.split() == ["#", "OUTCOME", "WORKER", "STARTED", "TOOK", "ERROR"]
    assert [row.split()[:3] for row in rows] == [
        ["1", "retrying", worker_id],
        ["2", "failed", worker_id],
    ]
    assert all(row.endswith("ValueError: printer on fire") for row in rows)


async def test_unknown_backend_and_bad_state_are_usage_errors(setup: Setup) -> None:
    bad_backend = await cli(setup, "jobs", "list", "app", "--backend", "nope")
    assert bad_backend.code == 2 and "unknown backend 'nope'" in bad_backend.stderr
    bad_state = await cli(setup, "jobs", "list", "app", "--state", "sleeping")
    assert bad_state.code == 2 and "'sleeping' is not a job state" in bad_state.stderr
    bad_cursor = await cli(setup, "jobs", "list", "app", "--cursor", "not-a-cursor")
    assert bad_cursor.code == 2, bad_cursor.stderr
    assert "not-a-cursor" in bad_cursor.stderr and "Traceback" not in bad_cursor.stderr


BARE_APP = """
from lexigram.tasks import Capability, MemoryTaskQueue, TaskProvider


class Bare(MemoryTaskQueue):
    capabilities = MemoryTaskQueue.capabilities - {
        Capability.INSPECT, Capability.CANCEL, Capability.WORKERS
    }


provider = TaskProvider(queue=Bare("bare"))
"""


@pytest.mark.parametrize(
    "command",
    [
        ("jobs", "list", "app"),
        ("jobs", "show", "x", "-A", "app"),
        ("jobs", "cancel", "x", "-A", "app"),
        ("workers", "app"),
    ],
    ids=["list", "show", "cancel", "workers"],
)
async def test_a_backend_without_the_capability_is_exit_3(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    (tmp_path / "app.py").write_text(BARE_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEXIGRAM_TASKS_")}
    result = await cli(Setup(tmp_path, env, "memory"), *command)
    assert result.code == 3, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "Bare" in line and "capability" in line
    assert "Traceback" not in result.stderr
