"""Server cost per job of the Redis lease and ack scripts, without a worker.

    python benchmarks/redis_script_cost.py [N] [BATCH] [HELD]

Enqueues N jobs (default 20,000), then leases BATCH jobs a call (default 20)
and acks them BATCH at a time, keeping HELD leased jobs unacked (default 0)
as a busy worker does: the lease set and rq's started registry hold about
HELD + BATCH entries, and a sorted set of up to 128 costs each insert a walk
over its members. Reports redis-server's CPU per job (``INFO cpu``) and the
script and command time and calls per job (``INFO commandstats``).

With ``SCRIPT_COST_LIMITS=1`` every job also holds a slot of a per-key
concurrency limit whose keys never collide, as a worker takes them: the
queue's own limiter (``RedisConcurrencyLimiter.for_queue``) acquires a leased
batch's slots in one call, and each ack carries the batch's releases.

``SCRIPT_COST_URL`` names the database (default ``redis://127.0.0.1:6379/13``,
flushed before and after); a private ``redis-server --port N`` keeps other
clients out of the figures. With ``SCRIPT_COST_CALLGRIND=PID`` (the server run
under ``valgrind --tool=callgrind --callgrind-out-file=DIR/cg.%p``, and
``SCRIPT_COST_CALLGRIND_DIR=DIR``) it zeroes the server's counts before the
drain, dumps them after and prints the instructions per job, which the load of
other processes does not change (``callgrind_annotate`` on the dump shows where
they go). With ``SCRIPT_COST_SPLIT=R`` as well, they are split by phase: the
drain goes in rounds of R jobs (HELD + R leases in the sets), and the counts
are zeroed before and dumped after each round's leases, acquires and acks.
"""

import asyncio
import glob
import os
import subprocess
import sys
from collections import Counter

import redis

from lexigram.tasks import TaskProvider
from lexigram.tasks.protocol import Delivery
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.redis.concurrency import RedisConcurrencyLimiter

URL = os.environ.get("SCRIPT_COST_URL", "redis://127.0.0.1:6379/13")
CALLGRIND = os.environ.get("SCRIPT_COST_CALLGRIND")
CALLGRIND_DIR = os.environ.get("SCRIPT_COST_CALLGRIND_DIR", ".")
LIMITS = os.environ.get("SCRIPT_COST_LIMITS") == "1"
SPLIT = int(os.environ.get("SCRIPT_COST_SPLIT", "0"))

queue = RedisTaskQueue(redis_url=URL, queue_name="script-cost")
provider = TaskProvider(queue=queue)


@provider.task(name="noop")
async def noop() -> None:
    pass


def server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"] + info["used_cpu_sys"])


def zero_instructions() -> None:
    assert CALLGRIND is not None
    subprocess.run(["callgrind_control", "-z", CALLGRIND], check=True, capture_output=True)


def instructions() -> int:
    """The instructions callgrind counted since it was last zeroed (dumps them)."""
    assert CALLGRIND is not None
    subprocess.run(["callgrind_control", "-d", CALLGRIND], check=True, capture_output=True)
    dumps = glob.glob(os.path.join(CALLGRIND_DIR, f"cg.{CALLGRIND}.*"))
    with open(max(dumps, key=os.path.getmtime)) as dump:
        totals = [line for line in dump if line.startswith(("summary:", "totals:"))]
    return int(totals[-1].split()[1])


class Phases:
    """Instructions counted per phase (under callgrind)."""

    def __init__(self) -> None:
        self.counted: Counter[str] = Counter()

    def start(self) -> None:
        zero_instructions()

    def stop(self, name: str) -> None:
        self.counted[name] += instructions()


class Worker:
    """Leases, takes the limits' slots, gives them back and acks, as a worker does."""

    def __init__(self, limiter: RedisConcurrencyLimiter | None) -> None:
        self.limiter = limiter
        self.keys = 0
        self.holds: dict[int, tuple[list[str], str]] = {}  # id(delivery) -> its slots

    async def lease(self, batch: int) -> list[Delivery]:
        deliveries = await queue.dequeue(max_jobs=batch, lease_seconds=30)
        for delivery in deliveries:
            delivery.worker_id = "script-cost"
        return deliveries

    async def acquire(self, deliveries: list[Delivery]) -> None:
        """The slots of a leased batch, in one call."""
        if self.limiter is None or not deliveries:
            return
        requests = []
        for delivery in deliveries:
            self.keys += 1
            requests.append(([(f"task:noop:key:{self.keys}", 1)], f"script-cost/{id(delivery)}"))
        taken = await self.limiter.acquire_many(requests, 30.0)
        assert all(taken), taken
        for delivery, (limits, holder) in zip(deliveries, requests, strict=True):
            self.holds[id(delivery)] = ([limits[0][0]], holder)

    async def ack(self, deliveries: list[Delivery]) -> None:
        if self.limiter is not None:
            for delivery in deliveries:
                self.limiter.release_nowait(*self.holds.pop(id(delivery)))
        await queue.ack_many(deliveries)


async def drain(worker: Worker, n: int, batch: int, held: int) -> None:
    done, leased = 0, []
    while done < n:
        deliveries = await worker.lease(batch)
        await worker.acquire(deliveries)
        leased += deliveries
        if len(leased) > held or not deliveries:
            acked, leased = leased[:batch], leased[batch:]
            await worker.ack(acked)
            done += len(acked)


async def drain_in_rounds(
    worker: Worker, phases: Phases, size: int, n: int, batch: int, held: int
) -> None:
    """Lease a round of jobs, take their slots, then ack it, each phase counted on its own."""
    kept: list[Delivery] = []
    while len(kept) < held:
        deliveries = await worker.lease(min(batch, held - len(kept)))
        await worker.acquire(deliveries)
        kept += deliveries
    done = 0
    while done < n:
        batches: list[list[Delivery]] = []
        phases.start()
        while sum(map(len, batches)) < min(size, n - done):
            batches.append(await worker.lease(min(batch, n - done - sum(map(len, batches)))))
        phases.stop("lease")
        if worker.limiter is not None:
            phases.start()
            for deliveries in batches:
                await worker.acquire(deliveries)
            phases.stop("acquire")
        leased = [delivery for deliveries in batches for delivery in deliveries]
        phases.start()
        for start in range(0, len(leased), batch):
            await worker.ack(leased[start : start + batch])
        phases.stop("ack")
        done += len(leased)
    await worker.ack(kept)


async def main(n: int, batch: int, held: int) -> None:
    client = redis.Redis.from_url(URL)
    client.flushdb()
    await provider.connect()
    limiter = RedisConcurrencyLimiter.for_queue(queue) if LIMITS else None
    if limiter is not None:
        await limiter.connect()
    phases = Phases()
    worker = Worker(limiter)
    try:
        for start in range(0, n + held, 1000):
            await provider.enqueue_many([noop.job() for _ in range(min(1000, n + held - start))])
        stats, cpu = client.info("commandstats"), server_cpu(client)
        if CALLGRIND and SPLIT:
            await drain_in_rounds(worker, phases, SPLIT, n, batch, held)
        else:
            if CALLGRIND:
                phases.start()
            await drain(worker, n, batch, held)
            if CALLGRIND:
                phases.stop("drain")
        if limiter is not None:
            await limiter.flush()
        cpu = server_cpu(client) - cpu
        after = client.info("commandstats")
    finally:
        if limiter is not None:
            await limiter.disconnect()
        client.flushdb()
        await provider.disconnect()
    rows = []
    for name, now in after.items():
        old = stats.get(name, {"calls": 0, "usec": 0})
        calls, usec = now["calls"] - old["calls"], now["usec"] - old["usec"]
        if calls and name not in ("cmdstat_info", "cmdstat_flushdb"):
            rows.append(
                (usec, f"{name.removeprefix('cmdstat_')} {calls / n:.2f}x {usec / n:.2f}us")
            )
    counted = phases.counted
    line = f"batch {batch}, held {held}{', per-key limit' if LIMITS else ''}: "
    line += f"redis-server {1e6 * cpu / n:.1f} us CPU a job"
    if CALLGRIND:
        line += f", {sum(counted.values()) / n:,.0f} instructions a job"
    if SPLIT:
        line += " (" + ", ".join(f"{name} {count / n:,.0f}" for name, count in counted.items())
        line += ")"
    print(line)
    print("per job: " + ", ".join(text for _, text in sorted(rows, reverse=True)))


if __name__ == "__main__":
    arguments = [int(a) for a in sys.argv[1:4]]
    asyncio.run(main(*arguments, *[20000, 20, 0][len(arguments) :]))
