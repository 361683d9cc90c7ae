"""Workflows under SIGKILL: the worker process and the driver (not a test module).

    python workflow_crash_app.py BACKEND URL QUEUE SCHEMA RECORD_URL PREFIX READY_FILE

runs one worker process, which creates ``READY_FILE`` once its workers run
(``BACKEND`` is ``redis`` or ``postgres``; ``SCHEMA`` is ignored for Redis).
Each workflow is ``chain(seed.s(w), group(18 x
step.s(j)), collect.s(w))``: 20 steps. ``collect`` appends one line per run to
the Redis list ``PREFIX:runs`` at ``RECORD_URL``: its job id, attempt,
workflow number, the list it was given and when it started; it returns
``[len(list), attempt, when it returned]``, so the workflow's result names the
run that was recorded. Each group step does the same in ``PREFIX:steps``, and
returns ``[value, attempt, when it returned]`` to the callback. :func:`run` starts workers and,
while the workflows run, SIGKILLs a random ready one whenever two are ready
(a process takes seconds to start on a busy machine, so killing faster would
only leave no worker at all), and returns the runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from lexigram.tasks import TaskProvider, chain, current_job, group
from lexigram.tasks.workflows import WorkflowHandle

#: Steps of the group in the middle (with the seed and the callback: 20).
FAN_OUT = 18


def expected_input(workflow: int) -> list[int]:
    """What ``collect`` must be given for workflow number ``workflow``."""
    return [workflow * 100 + j for j in range(FAN_OUT)]


def build_queue(backend: str, url: str, queue: str, schema: str) -> Any:
    if backend == "redis":
        from lexigram.tasks.redis import RedisTaskQueue

        return RedisTaskQueue(url, queue)
    from lexigram.tasks.postgres import PostgresTaskQueue

    return PostgresTaskQueue(url, queue, schema=schema)


def build_provider(
    backend: str, url: str, queue: str, schema: str, record_url: str, prefix: str
) -> TaskProvider:
    provider = TaskProvider(
        queue=build_queue(backend, url, queue, schema),
        worker_count=20,
        lease_seconds=2.0,
        poll_interval=0.1,
        # Kills come often: a step may lose several workers before one finishes it.
        lost_lease_retries=50,
    )
    recorder = aioredis.Redis.from_url(record_url)

    @provider.task(name="crash.seed")
    async def seed(workflow: int) -> int:
        return workflow

    @provider.task(name="crash.step")
    async def step(workflow: int, j: int) -> list[float]:
        job = current_job()
        line = {"workflow": workflow, "j": j, "attempt": job.attempt, "started": time.time()}
        await recorder.rpush(f"{prefix}:steps", json.dumps(line))
        await asyncio.sleep(random.uniform(0, 0.004))
        # The callback is given the recorded run of each step: which it was, when it returned.
        return [workflow * 100 + j, job.attempt, time.time()]

    @provider.task(name="crash.collect")
    async def collect(inputs: list[list[float]], workflow: int) -> list[float]:
        job = current_job()
        line = {
            "job": job.id,
            "attempt": job.attempt,
            "started": time.time(),
            "workflow": workflow,
            "values": [int(value) for value, _, _ in inputs],
            "inputs": inputs,
        }
        await recorder.rpush(f"{prefix}:runs", json.dumps(line))
        # The workflow's result names the run that was recorded and when it returned.
        return [len(inputs), job.attempt, time.time()]

    return provider


def shape(provider: TaskProvider, workflow: int) -> Any:
    seed, step, collect = (provider.tasks[n] for n in ("crash.seed", "crash.step", "crash.collect"))
    return chain(seed.s(workflow), group(step.s(j) for j in range(FAN_OUT)), collect.s(workflow))


@dataclass
class Outcome:
    handles: list[WorkflowHandle]
    runs: list[dict[str, Any]]
    #: Every run of a group step: workflow, j, attempt, when it started.
    step_runs: list[dict[str, Any]]
    kills: int
    seconds: float
    results: list[Any] = field(default_factory=list)
    #: Steps delivered again after their killed worker had recorded them (not run again).
    recorded_not_rerun: int = 0


async def run(
    backend: str,
    url: str,
    queue: str,
    schema: str,
    record_url: str,
    prefix: str,
    *,
    workflows: int = 200,
    processes: int = 3,
    kill_every: tuple[float, float] = (0.3, 1.0),
    kill_for: float = 45.0,
    max_kills: int = 12,
    waves: int = 8,
    finish_within: float = 60.0,
    log_dir: Path,
) -> Outcome:
    """Enqueue ``workflows`` in ``waves`` (one after each kill); kill a random ready
    worker every ``kill_every`` seconds
    (``max_kills`` times at most: each kill makes the jobs of the killed worker
    wait for their leases, then run one at a time) until every callback ran or
    ``kill_for`` seconds passed, then wait up to
    ``finish_within`` seconds for every workflow; return what ran."""
    argv = [sys.executable, __file__, backend, url, queue, schema, record_url, prefix]
    os.makedirs(log_dir, exist_ok=True)
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def spawn() -> tuple[subprocess.Popen[bytes], Path]:
        ready = log_dir / f"ready-{len(started)}"
        with open(log_dir / f"worker-{len(started)}.log", "wb") as log:
            process = subprocess.Popen([*argv, str(ready)], stdout=log, stderr=subprocess.STDOUT)
        started.append((process, ready))
        return process, ready

    live = [spawn() for _ in range(processes)]
    provider = build_provider(backend, url, queue, schema, record_url, prefix)
    recorder = aioredis.Redis.from_url(record_url)
    begin = time.monotonic()
    kills = 0
    handles: list[WorkflowHandle] = []
    try:
        await provider.connect()
        rng = random.Random(21)
        next_kill = time.monotonic() + rng.uniform(*kill_every)
        per_wave = -(-workflows // waves)
        while time.monotonic() - begin < kill_for:
            # Wave k is sent after the k-th kill, so kills land while workflows run.
            if len(handles) < workflows and kills >= len(handles) // per_wave:
                for w in range(len(handles), min(len(handles) + per_wave, workflows)):
                    handles.append(await shape(provider, w).enqueue())
            elif await recorder.llen(f"{prefix}:runs") >= workflows:
                break
            ready = [entry for entry in live if entry[1].exists()]
            # Two ready workers at least: one is killed, one goes on.
            if time.monotonic() >= next_kill and len(ready) >= 2 and kills < max_kills:
                victim = ready[rng.randrange(len(ready))]
                live.remove(victim)
                os.kill(victim[0].pid, signal.SIGKILL)
                victim[0].wait()
                kills += 1
                live.append(spawn())
                next_kill = time.monotonic() + rng.uniform(*kill_every)
            await asyncio.sleep(0.02)
        finish_by = time.monotonic() + finish_within
        results = [await h.result(timeout=max(0.1, finish_by - time.monotonic())) for h in handles]
        seconds = time.monotonic() - begin
        raw = await recorder.lrange(f"{prefix}:runs", 0, -1)
        steps = [json.loads(r) for r in await recorder.lrange(f"{prefix}:steps", 0, -1)]
        skipped = _count_in_logs(log_dir, "not run again")
        return Outcome(
            handles, [json.loads(r) for r in raw], steps, kills, seconds, results, skipped
        )
    finally:
        for process, _ in started:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        await recorder.delete(f"{prefix}:runs", f"{prefix}:steps")
        for handle in handles:
            await handle.forget()
        await recorder.aclose()
        await provider.disconnect()


def _count_in_logs(log_dir: Path, text: str) -> int:
    """How many times the workers logged ``text``."""
    return sum(log.read_text(errors="replace").count(text) for log in log_dir.glob("worker-*.log"))


async def _worker(argv: list[str]) -> None:
    provider = build_provider(*argv[:6])
    async with provider:
        os.close(os.open(argv[6], os.O_CREAT | os.O_WRONLY))
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_worker(sys.argv[1:]))
