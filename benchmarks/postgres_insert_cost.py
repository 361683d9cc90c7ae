"""Server instructions of one single enqueue on PostgreSQL, against the raw INSERT loop.

    python benchmarks/postgres_insert_cost.py [raw] [lexigram] [--n 500]

Runs the shared harness's raw-postgres INSERT (one jsonb parameter into a
table with a bigserial key and one partial index) and ``await
task.enqueue(...)`` of a registered task, each in two backend sessions, of
100 and of ``--n`` statements (after 20 to warm up), and prints the
difference of the two sessions' instructions divided by the difference of
their statements: what one more statement costs the server, whatever the
load of other processes.

It needs a private server run under callgrind, whose backends write
``callgrind.out.<pid>`` into ``PG_COST_CALLGRIND_DIR`` when they exit::

    mkdir -p /tmp/pgcg/cg && chown -R postgres /tmp/pgcg
    su postgres -c '/usr/lib/postgresql/15/bin/initdb -D /tmp/pgcg/pg -A trust -U postgres'
    su postgres -c 'valgrind --tool=callgrind --vgdb=no \\
        --callgrind-out-file=/tmp/pgcg/cg/callgrind.out.%p \\
        /usr/lib/postgresql/15/bin/postgres -D /tmp/pgcg/pg -p 55433 -k /tmp/pgcg \\
        -c max_connections=20 -c fsync=off -c autovacuum=off -c jit=off' &
    PG_COST_DSN=postgresql://postgres@127.0.0.1:55433 PG_COST_CALLGRIND_DIR=/tmp/pgcg/cg \\
        python benchmarks/postgres_insert_cost.py

The database ``insert_cost`` is created (dropped first) on that server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable

import asyncpg

from lexigram.tasks import TaskProvider
from lexigram.tasks.postgres import PostgresTaskQueue

SERVER = os.environ.get("PG_COST_DSN", "postgresql://postgres@127.0.0.1:55433")
CALLGRIND_DIR = os.environ.get("PG_COST_CALLGRIND_DIR", ".")
DSN = f"{SERVER}/insert_cost"
WARM_UP, FEWER = 20, 100

#: A session: runs n statements on one backend, then closes it; returns the backend's pid.
Session = Callable[[int], Awaitable[int]]


def instructions(pid: int) -> int:
    """The instructions of backend ``pid``, from the file callgrind writes when it exits."""
    path = os.path.join(CALLGRIND_DIR, f"callgrind.out.{pid}")
    for _ in range(600):
        if os.path.exists(path) and os.path.getsize(path) > 0:
            size = os.path.getsize(path)
            time.sleep(0.3)
            if os.path.getsize(path) == size:
                with open(path) as dump:
                    for line in dump:
                        if line.startswith(("summary:", "totals:")):
                            return int(line.split()[1])
        time.sleep(0.1)
    raise RuntimeError(f"{path} was not written: is the server run under callgrind?")


async def raw_session(n: int) -> int:
    connection = await asyncpg.connect(DSN)
    payload = json.dumps({"mode": "noop", "enq": None})
    for _ in range(WARM_UP + n):
        await connection.execute("INSERT INTO bench_jobs (payload) VALUES ($1::jsonb)", payload)
    pid: int = connection.get_server_pid()
    await connection.close()
    return pid


async def lexigram_session(n: int) -> int:
    queue = PostgresTaskQueue(postgres_dsn=DSN, queue_name="bench")
    provider = TaskProvider(queue=queue)

    @provider.task(name="bench_job")
    async def bench_job(mode: str, enq: float | None = None) -> None:
        pass

    await provider.connect()
    for _ in range(WARM_UP + n):
        await bench_job.enqueue("noop", None)
    held = queue._producer  # the connection single enqueues go out on
    assert held is not None
    pid: int = held[1].get_server_pid()
    await provider.disconnect()
    return pid


async def main(loops: list[str], n: int) -> None:
    admin = await asyncpg.connect(f"{SERVER}/postgres")
    await admin.execute("DROP DATABASE IF EXISTS insert_cost WITH (FORCE)")
    await admin.execute("CREATE DATABASE insert_cost")
    await admin.close()
    setup = await asyncpg.connect(DSN)
    await setup.execute(
        "CREATE TABLE bench_jobs (id bigserial PRIMARY KEY, payload jsonb NOT NULL,"
        " status text NOT NULL DEFAULT 'queued', enqueued_at timestamptz NOT NULL DEFAULT now());"
        " CREATE INDEX bench_jobs_queued ON bench_jobs (id) WHERE status = 'queued'"
    )
    await setup.close()
    await PostgresTaskQueue(postgres_dsn=DSN, queue_name="bench").migrate()
    sessions: dict[str, Session] = {"raw": raw_session, "lexigram": lexigram_session}
    for name in loops:
        fewer = instructions(await sessions[name](FEWER))
        more = instructions(await sessions[name](n))
        print(f"{name:<9} {(more - fewer) / (n - FEWER):>9,.0f} instructions per statement")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("loops", nargs="*", help="raw and/or lexigram (default: both)")
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.loops or ["raw", "lexigram"], args.n))
