"""The framework-free ceiling of the ``*-cpu`` adapters: the same job (about 5 ms of
pure Python, then the counter INCR) in two forked processes, each a plain loop of
BRPOP from a Redis list, the job, repeat. No acks, no leases, no retries: what two
processes on this machine can do with the job alone, to read the ``*-cpu`` rows
against. The harness has no CPU scenario: ``noop_drain`` is the CPU-bound drain.

Run from the repository root:
    ../shared/bench/run --adapters benchmarks/adapters --scenarios noop_drain \
        raw-redis-cpu lexigram-redis-cpu celery-redis-cpu dramatiq-redis-cpu
"""

import json
import os
import signal
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import _benchlib as B
import _cpu_burn
import redis

SYSTEM, BACKEND = "raw-redis", "redis-cpu"
DB = int(os.environ.get("LEXIGRAM_BENCH_DB", "7"))  # several runs at once: one db each
URL = f"redis://127.0.0.1:6379/{DB}"
PROCESSES = 2
CONCURRENCY = {"noop_drain": PROCESSES, "sleep_drain": PROCESSES, "latency": PROCESSES}
NOTES = (
    f"job: ~5 ms pure-Python CPU + INCR; {PROCESSES} forked processes, each a loop of "
    "BRPOP + job (redis-py, no framework); bulk = LPUSH of 1000 values per call"
)

client = redis.Redis.from_url(URL)


def clean():
    B.redis_flush(URL)


def _payload(kind, enq=None):
    return json.dumps({"mode": kind, "enq": enq})


def enqueue(kind, enq=None):
    client.lpush("bench", _payload(kind, enq))


def enqueue_bulk(kind, n):
    payload = _payload(kind)
    for start in range(0, n, 1000):
        client.lpush("bench", *([payload] * min(1000, n - start)))


def queued_count():
    return client.llen("bench")


def _serve():
    stopping = []
    signal.signal(signal.SIGTERM, lambda *a: stopping.append(1))
    own = redis.Redis.from_url(URL)
    while not stopping:
        popped = own.brpop("bench", timeout=1)
        if popped is None:
            continue
        job = json.loads(popped[1])
        _cpu_burn.burn()
        B.sync_job(job["mode"], job["enq"])


def worker_main(scenario, concurrency):
    children = []
    for _ in range(PROCESSES):
        pid = os.fork()
        if pid == 0:
            try:
                _serve()
            finally:
                os._exit(0)
        children.append(pid)
    signal.signal(signal.SIGTERM, lambda *a: None)
    signal.signal(signal.SIGINT, lambda *a: None)
    signal.pause()
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    B.main(globals())
