"""lexigram-tasks on its in-memory backend (MemoryTaskQueue), for framework overhead.

The memory backend lives in one process, but the harness enqueues in the
driver and drains in a separate worker process. So the WORKER ENQUEUES ITS OWN
JOBS: at start-up it puts BENCH_TARGET jobs into its queue with enqueue_many
(batches of 1000), then starts the pool ("queued before worker" semantics, as
in noop_drain/sleep_drain for every other system). The driver's own enqueues
go into a queue in the driver process and only measure enqueue_per_s /
bulk_enqueue_per_s. In `latency` the worker runs the paced producer itself
(same job count and rate as the driver, passed through the environment), so
the figure is pick-up latency inside one event loop.

Variants: (none) = default telemetry, opentelemetry-api only, no SDK in this
venv; `nootel` = provider.telemetry swapped for a telemetry that makes no
OpenTelemetry API call at all (the baseline for the API's overhead).

Extra scenarios (`--scenarios inproc_noop,otel_calls`): `inproc_noop`
drains no-op jobs in the driver process with no Redis counter per job (the
framework's per-job cost alone, the worst case for any per-job overhead),
with and without the API calls in alternating rounds; `otel_calls` times
the two per-job hooks (process, send) alone, real vs no-op.
"""

import asyncio
import contextlib
import os
import sys
import time

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import _benchlib as B
from opentelemetry.trace import INVALID_SPAN

from lexigram.tasks import MemoryTaskQueue, TaskProvider
from lexigram.tasks._otel import Telemetry

SYSTEM, BACKEND = "lexigram", "memory"
CONCURRENCY = {"noop_drain": 50, "sleep_drain": 100, "latency": 50}
LATENCY_ENV = "LEXIGRAM_BENCH_LATENCY"
NOTES = (
    "TaskProvider(MemoryTaskQueue(), worker_count=concurrency).serve(); jobs enqueued BY THE "
    "WORKER at start-up (memory backend: one process); store_result=False; "
    "opentelemetry-api only (no SDK)"
)

provider: TaskProvider
bench_job = None
VARIANT = None


class NoTelemetry(Telemetry):
    """Telemetry whose hooks make no OpenTelemetry call: the baseline of the overhead figure."""

    _null = contextlib.nullcontext(INVALID_SPAN)

    def __init__(self) -> None:  # no tracer, no meter, no instruments
        pass

    def send(self, job, system):
        return self._null

    def send_many(self, jobs, system, queue):
        return self._null

    def process(self, job, system, worker_id):
        return self._null

    def record_failure(self, span, exc, error_type, will_retry):
        pass

    def record_retry(self, span, delay, reason):
        pass

    def record_dead_letter(self, span, reason):
        pass

    def record_outcome(self, span, outcome):
        pass

    def record_unprocessed_dead_letter(self, job, system, queue, error_type, reason):
        pass

    def worker_span(self, operation, system, queue, worker_id, worker_count):
        return INVALID_SPAN


def build_provider(worker_count):
    """A provider with the bench task, with or without telemetry per the variant."""
    global bench_job
    p = TaskProvider(queue=MemoryTaskQueue("bench"), worker_count=worker_count)
    if VARIANT == "nootel":
        p.telemetry = NoTelemetry()

    @p.task(name="bench_job", store_result=False)
    async def _job(mode, enq=None):
        await B.async_job(mode, enq)

    bench_job = _job
    return p


def configure(args):
    global provider, VARIANT, BACKEND, NOTES
    if args.variant not in (None, "nootel"):
        raise SystemExit(f"unknown variant {args.variant!r} (known: nootel)")
    VARIANT = args.variant
    if VARIANT == "nootel":
        BACKEND = "memory-nootel"
        NOTES = NOTES.replace("opentelemetry-api only (no SDK)", "telemetry replaced by no-ops")
    worker = args.mode == "_worker"
    if not worker:  # the worker process inherits the environment the driver spawns it with
        os.environ[LATENCY_ENV] = f"{args.latency_jobs},{args.latency_rate}"
    provider = build_provider(args.concurrency if worker else 1)


async def clean():
    global provider
    await provider.disconnect()
    provider = build_provider(1)  # a fresh, empty queue


async def teardown():
    await provider.disconnect()


async def enqueue(kind, enq=None):
    await bench_job.enqueue(kind, enq)


async def enqueue_bulk(kind, n):
    await _enqueue_many(kind, n)


async def _enqueue_many(kind, n):
    for start in range(0, n, 1000):
        await provider.enqueue_many([bench_job.job(kind) for _ in range(min(1000, n - start))])


class _LatencyProducer:
    """The paced producer of the latency scenario, inside the worker process."""

    def __init__(self):
        self.task = None

    async def start(self):
        self.task = asyncio.create_task(self._produce())

    async def stop(self):
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _produce(self):
        jobs, rate = os.environ.get(LATENCY_ENV, "2000,200").split(",")
        await bench_job.enqueue("noop")  # the warm-up job the driver waits for
        await asyncio.sleep(0.5)
        interval = 1.0 / float(rate)
        t0 = time.perf_counter()
        for i in range(int(jobs)):
            delay = t0 + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await bench_job.enqueue("lat", time.time())


async def worker_main(scenario, concurrency):
    if scenario == "latency":
        provider.add_service(_LatencyProducer())
    else:
        kind = "noop" if scenario == "noop_drain" else "sleep"
        await _enqueue_many(kind, int(os.environ["BENCH_TARGET"]))
    await provider.serve()


async def _inproc_round(n, concurrency, telemetry_off):
    """CPU seconds this process spends draining n no-op jobs enqueued beforehand."""
    p = TaskProvider(queue=MemoryTaskQueue("inproc"), worker_count=concurrency)
    if telemetry_off:
        p.telemetry = NoTelemetry()
    done = asyncio.Event()
    count = 0

    @p.task(name="noop", store_result=False)
    async def noop():
        nonlocal count
        count += 1
        if count == n:
            done.set()

    await p.connect()
    for start in range(0, n, 1000):
        await p.enqueue_many([noop.job() for _ in range(min(1000, n - start))])
    c0 = time.process_time()
    await p.start()
    await asyncio.wait_for(done.wait(), 300)
    cpu = time.process_time() - c0
    await p.stop()
    return cpu


async def _inproc_enqueue_round(n, telemetry_off):
    """CPU seconds of n single enqueue calls."""
    p = TaskProvider(queue=MemoryTaskQueue("inproc"))
    if telemetry_off:
        p.telemetry = NoTelemetry()

    @p.task(name="noop", store_result=False)
    async def noop():
        pass

    await p.connect()
    c0 = time.process_time()
    for _ in range(n):
        await noop.enqueue()
    return time.process_time() - c0


async def inproc_noop(args):
    """The framework alone, with and without telemetry, alternating in ONE process.

    ROUNDS rounds each drain N no-op jobs (no Redis round trip) and make N
    single enqueue calls, once with the real telemetry (API only) and once
    with NoTelemetry, in alternating order. Costs are this process's CPU time
    (time.process_time), which the other processes on a shared machine
    disturb far less than wall time. The overhead is the median over the
    rounds of (with / without) of the same round; per-job costs are given as
    the minimum (least disturbed run) and the median.
    """
    import statistics

    n = min(args.n, 2000)
    concurrency = args.concurrency or CONCURRENCY["noop_drain"]
    drain = {False: [], True: []}
    enq = {False: [], True: []}
    for i in range(ROUNDS):
        for off in (False, True) if i % 2 == 0 else (True, False):
            drain[off].append(await _inproc_round(n, concurrency, off) / n * 1e6)
            enq[off].append(await _inproc_enqueue_round(n, off) / n * 1e6)
    rows = []
    for off, scenario in ((False, "inproc_noop"), (True, "inproc_noop_nootel")):
        rows.append(
            {
                "scenario": scenario,
                "n": n,
                "concurrency": concurrency,
                "jobs_per_s": round(1e6 / min(drain[off]), 1),
                "enqueue_per_s": round(1e6 / min(enq[off]), 1),
                "cpu_us_per_job": round(min(drain[off]), 2),
                "cpu_us_per_job_median": round(statistics.median(drain[off]), 2),
                "cpu_us_per_enqueue": round(min(enq[off]), 2),
                "cpu_us_per_enqueue_median": round(statistics.median(enq[off]), 2),
                "notes": f"framework alone, one process, no Redis counter; CPU time, min of "
                f"{ROUNDS} alternating rounds; "
                + ("telemetry replaced by no-ops" if off else "opentelemetry-api only"),
            }
        )
    # Paired: each round's two runs saw about the same load; the median of the
    # per-round ratios is the overhead figure.
    with_otel = rows[0]
    for key, costs in (("per_job", drain), ("per_enqueue", enq)):
        ratios = [on / off for on, off in zip(costs[False], costs[True], strict=True)]
        with_otel[f"otel_overhead_pct_{key}"] = round((statistics.median(ratios) - 1) * 100, 1)
    return rows


ROUNDS = 25


def otel_calls(args):
    """The telemetry hooks alone: process() and send() per call, real vs no-op, in a loop.

    The end-to-end figures above move by more than this from run to run on a
    shared machine; this is the cost the hooks add to each job, measured
    directly (best of 9 alternating rounds of 20,000 calls, CPU time).
    """
    from lexigram.tasks.job import Job

    job = Job(task="bench_job", queue="bench", attempt=1)
    real, none = Telemetry(), NoTelemetry()

    def per_call(telemetry, hook):
        c0 = time.process_time()
        if hook == "process":
            for _ in range(20_000):
                with telemetry.process(job, "memory", "worker"):
                    pass
        else:
            for _ in range(20_000):
                job.headers.clear()
                with telemetry.send(job, "memory"):
                    pass
        return (time.process_time() - c0) / 20_000 * 1e6

    rows = []
    for hook in ("process", "send"):
        costs = {True: [], False: []}
        for i in range(9):
            for with_api in (True, False) if i % 2 == 0 else (False, True):
                costs[with_api].append(per_call(real if with_api else none, hook))
        rows.append(
            {
                "scenario": f"otel_{hook}_call",
                "n": 20_000,
                "concurrency": None,
                "us_per_call": round(min(costs[True]), 3),
                "us_per_call_nootel": round(min(costs[False]), 3),
                "otel_us_added": round(min(costs[True]) - min(costs[False]), 3),
                "notes": "CPU time per call, best of 9 alternating rounds; opentelemetry-api only",
            }
        )
    return rows


EXTRA_SCENARIOS = {"inproc_noop": inproc_noop, "otel_calls": otel_calls}


if __name__ == "__main__":
    B.main(globals())
