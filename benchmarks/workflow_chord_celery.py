"""Celery's chord of N no-op tasks on Redis, for ``workflow_chord.py`` (run with Celery's venv).

    python -P workflow_chord_celery.py --n 1000

Flushes Redis db 5 (broker and result backend), starts ONE worker
(``--pool=threads -c 50``), waits until it is ready, times
``chord(noop.s() x N)(done.s())`` from the call to the callback and prints
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time

import redis
from celery import Celery, chord

URL = "redis://127.0.0.1:6379/5"
app = Celery("wfbench", broker=URL, backend=URL)
app.conf.worker_hijack_root_logger = False


@app.task(name="wfbench.noop")
def noop() -> None:
    return None


@app.task(name="wfbench.done")
def done(results: list[None]) -> int:
    redis.Redis.from_url(URL).set("wfbench:done", repr(time.time()))
    return len(results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    client = redis.Redis.from_url(URL)
    client.flushdb()
    worker = subprocess.Popen(
        [sys.executable, "-P", __file__, "_worker"], stdout=sys.stderr, stderr=sys.stderr
    )
    try:
        while not app.control.ping(timeout=0.5):
            time.sleep(0.1)
        started = time.time()
        result = chord(noop.s() for _ in range(args.n))(done.s())
        enqueued = time.time()
        while (stamp := client.get("wfbench:done")) is None:
            time.sleep(0.005)
        finished = float(stamp)
        assert result.get(timeout=60) == args.n
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    row = {
        "system": "celery-redis",
        "n": args.n,
        "seconds": round(finished - started, 4),
        "enqueue_s": round(enqueued - started, 4),
    }
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["_worker"]:
        app.worker_main(["worker", "--pool=threads", "-c", "50", "--loglevel=WARNING"])
    else:
        main()
