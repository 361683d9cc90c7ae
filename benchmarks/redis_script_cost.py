"""Server cost per job of the Redis lease and ack scripts, without a worker.

    python benchmarks/redis_script_cost.py [N] [BATCH] [HELD]

Enqueues N jobs (default 20,000), then leases BATCH jobs a call (default 20)
and acks them BATCH at a time, keeping HELD leased jobs unacked (default 0)
as a busy worker does: the lease set and rq's started registry hold about
HELD + BATCH entries, and a sorted set of up to 128 costs each insert a walk
over its members. Reports redis-server's CPU per job (``INFO cpu``) and the
script and command time and calls per job (``INFO commandstats``).

``SCRIPT_COST_URL`` names the database (default ``redis://127.0.0.1:6379/13``,
flushed before and after); a private ``redis-server --port N`` keeps other
clients out of the figures. With ``SCRIPT_COST_CALLGRIND=PID`` (the server run
under ``valgrind --tool=callgrind --callgrind-out-file=DIR/cg.%p``, and
``SCRIPT_COST_CALLGRIND_DIR=DIR``) it zeroes the server's counts before the
drain, dumps them after and prints the instructions per job, which the load of
other processes does not change.
"""

import asyncio
import glob
import os
import subprocess
import sys

import redis

from lexigram.tasks import TaskProvider
from lexigram.tasks.redis import RedisTaskQueue

URL = os.environ.get("SCRIPT_COST_URL", "redis://127.0.0.1:6379/13")
CALLGRIND = os.environ.get("SCRIPT_COST_CALLGRIND")
CALLGRIND_DIR = os.environ.get("SCRIPT_COST_CALLGRIND_DIR", ".")

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


async def drain(n: int, batch: int, held: int) -> None:
    done, leased = 0, []
    while done < n:
        deliveries = await queue.dequeue(max_jobs=batch, lease_seconds=30)
        for delivery in deliveries:
            delivery.worker_id = "script-cost"
        leased += deliveries
        if len(leased) > held or not deliveries:
            acked, leased = leased[:batch], leased[batch:]
            await queue.ack_many(acked)
            done += len(acked)


async def main(n: int, batch: int, held: int) -> None:
    client = redis.Redis.from_url(URL)
    client.flushdb()
    await provider.connect()
    try:
        for start in range(0, n, 1000):
            await provider.enqueue_many([noop.job() for _ in range(min(1000, n - start))])
        if CALLGRIND:
            zero_instructions()
        stats, cpu = client.info("commandstats"), server_cpu(client)
        await drain(n, batch, held)
        counted = instructions() if CALLGRIND else None
        cpu = server_cpu(client) - cpu
        after = client.info("commandstats")
    finally:
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
    print(
        f"batch {batch}, held {held}: redis-server {1e6 * cpu / n:.1f} us CPU a job"
        + (f", {counted / n:,.0f} instructions a job" if counted is not None else "")
    )
    print("per job: " + ", ".join(text for _, text in sorted(rows, reverse=True)))


if __name__ == "__main__":
    arguments = [int(a) for a in sys.argv[1:4]]
    asyncio.run(main(*arguments, *[20000, 20, 0][len(arguments) :]))
