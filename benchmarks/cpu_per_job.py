"""CPU time per job of a benchmark adapter's worker, against the same job's own cost.

    BENCH_COUNTER_URL=redis://127.0.0.1:6379/8 LEXIGRAM_BENCH_DB=10 \\
    PYTHONPATH=../shared/bench/adapters $BENCH_HOME/.venvs/<adapter>/bin/python \\
    benchmarks/cpu_per_job.py <adapter>[:variant] [N] [CONCURRENCY]

Run it with the adapter's own venv (the harness builds it: ``../shared/bench/run
--install-only <adapter>``), with the harness's ``adapters/`` folder on PYTHONPATH.
It enqueues N jobs of the adapter's ``noop_drain`` (its bulk API when it has one),
starts ONE worker as the harness does, and between the first and the last completion
sums the CPU time of the worker's whole process tree, and of the Redis server the
counter lives on (the queue's own server in the Redis adapters: INFO's process_id).
On a shared machine throughput follows the CPU share a system gets (more runnable
processes, more share); CPU time per job does not, so it shows what a system costs
beside its job. For the ``*-cpu`` adapters ``_cpu_burn.burn()`` alone is timed in this
process too (``burn``): no system can spend less per job than that.
"""

import asyncio
import inspect
import os
import runpy
import subprocess
import sys
import time

import psutil
import redis

HERE = os.path.dirname(os.path.abspath(__file__))
ADAPTERS = os.path.join(HERE, "adapters")
sys.path.insert(0, ADAPTERS)


async def _call(fn, *args):
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class _TreeClock:
    """CPU seconds spent by a process tree since each process was first seen."""

    def __init__(self, root: psutil.Process, tree: bool = True) -> None:
        self.root = root
        self.tree = tree
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.names: dict[int, str] = {}

    def sample(self) -> None:
        try:
            tree = [self.root, *(self.root.children(recursive=True) if self.tree else ())]
        except psutil.NoSuchProcess:
            return
        for process in tree:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            if process.pid not in self.first:
                self.first[process.pid] = times.user + times.system
                self.names[process.pid] = _role(process, self.root)
            self.last[process.pid] = times.user + times.system

    @property
    def spent(self) -> float:
        return sum(self.last[pid] - self.first[pid] for pid in self.last)

    def split(self, jobs: int) -> str:
        """Each process's CPU per job, largest first."""
        spent = sorted(((self.last[p] - self.first[p], p) for p in self.last), reverse=True)
        return ", ".join(f"{self.names[p]} {1e6 * s / jobs:,.0f}" for s, p in spent)


def _role(process: psutil.Process, root: psutil.Process) -> str:
    if process.pid == root.pid:
        return "root"
    try:
        line = " ".join(process.cmdline())
    except psutil.Error:
        return "?"
    if "multiprocessing" in line or "spawn_main" in line:
        return "child"
    return "worker" if "lexigram" in line or "celery" in line else "process"


def _drain(path: str, variant: str, c: int, n: int, counter: redis.Redis, key: str):
    """Start one worker, wait for n completions; (its tree's clock, done, seconds)."""
    env = dict(os.environ, BENCH_TARGET=str(n), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-P", path, "_worker", "--scenario", "noop_drain"]
    command += ["--concurrency", str(c)] + (["--variant", variant] if variant else [])
    worker = subprocess.Popen(command, env=env)
    clock = _TreeClock(psutil.Process(worker.pid))
    server = _TreeClock(psutil.Process(int(counter.info("server")["process_id"])), tree=False)
    try:
        while int(counter.get(key) or 0) < 1:
            time.sleep(0.002)
        started = time.monotonic()
        clock.sample()
        server.sample()
        while (done := int(counter.get(key) or 0)) < n:
            time.sleep(0.02)
            clock.sample()  # a process started later counts from when it is first seen
        server.sample()
        elapsed = time.monotonic() - started
    finally:
        worker.terminate()
        worker.wait(60)
    return clock, server, done, elapsed


async def measure(name: str, n: int, concurrency: int | None) -> None:
    import _benchlib as B

    adapter, _, variant = name.partition(":")
    path = os.path.join(ADAPTERS, f"{adapter}.py")
    sys.argv = [path]
    mod = runpy.run_path(path, run_name="cpu_per_job")
    args = B._args(["--variant", variant] if variant else [])
    if "configure" in mod:
        mod["configure"](args)
    c = concurrency or mod.get("CONCURRENCY", {}).get("noop_drain", 50)
    counter = redis.Redis.from_url(B.COUNTER_URL)
    if "setup" in mod:
        await _call(mod["setup"])
    try:
        await _call(mod["clean"])
        counter.flushdb()
        if "enqueue_bulk" in mod:
            await _call(mod["enqueue_bulk"], "noop", n)
        else:
            for _ in range(n):
                await _call(mod["enqueue"], "noop")
        clock, server, done, elapsed = _drain(path, variant, c, n, counter, B.KEY_DONE)
        await _call(mod["clean"])
        counter.flushdb()
    finally:
        if "teardown" in mod:
            await _call(mod["teardown"])
    line = (
        f"{name}: {done / elapsed:,.0f} jobs/s, worker tree {1e6 * clock.spent / done:,.0f} "
        f"us CPU/job ({len(clock.last)} processes, concurrency {c}: {clock.split(done)})"
        f"; redis-server {1e6 * server.spent / done:,.0f} us CPU/job"
    )
    if "_cpu_burn" in sys.modules:
        burn = sys.modules["_cpu_burn"].burn
        burn()
        t0 = time.process_time()
        for _ in range(200):
            burn()
        line += f"; burn alone {1e6 * (time.process_time() - t0) / 200:,.0f} us CPU"
    print(line, flush=True)


if __name__ == "__main__":
    asyncio.run(
        measure(
            sys.argv[1],
            int(sys.argv[2]) if len(sys.argv) > 2 else 3000,
            int(sys.argv[3]) if len(sys.argv) > 3 else None,
        )
    )
