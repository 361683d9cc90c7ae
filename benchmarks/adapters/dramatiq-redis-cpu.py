"""Dramatiq with the Redis broker and a CPU-bound job (about 5 ms of pure Python,
then the counter INCR, as ``lexigram-redis-cpu``). Worker: two processes (forked,
as the dramatiq CLI's ``--processes 2`` does), each a ``dramatiq.Worker`` with
``worker_threads`` = concurrency (2). The harness has no CPU scenario:
``noop_drain`` of this adapter is the CPU-bound drain."""

import os
import signal
import sys
import threading

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import _benchlib as B
import _cpu_burn
import dramatiq
from dramatiq.brokers.redis import RedisBroker

SYSTEM, BACKEND = "dramatiq", "redis-cpu"
DB = int(os.environ.get("LEXIGRAM_BENCH_DB", "14"))  # several runs at once: one db each
URL = f"redis://127.0.0.1:6379/{DB}"
PROCESSES = 2
CONCURRENCY = {"noop_drain": 2, "sleep_drain": 2, "latency": 2}
NOTES = (
    f"job: ~5 ms pure-Python CPU + INCR; {PROCESSES} forked processes, each "
    "Worker(worker_threads=concurrency), default middleware; no result backend"
)


broker = RedisBroker(url=URL)
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench_job", queue_name="bench", max_retries=0)
def bench_job(mode, enq=None):
    _cpu_burn.burn()
    B.sync_job(mode, enq)


def clean():
    B.redis_flush(URL)


def enqueue(kind, enq=None):
    bench_job.send(kind, enq)


def _serve(concurrency):
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    worker = dramatiq.Worker(broker, worker_threads=concurrency)
    worker.start()
    stop.wait()
    worker.stop(timeout=5000)


def worker_main(scenario, concurrency):
    children = []
    for _ in range(PROCESSES):
        pid = os.fork()
        if pid == 0:
            try:
                _serve(concurrency)
            finally:
                os._exit(0)
        children.append(pid)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    stop.wait()
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    B.main(globals())
