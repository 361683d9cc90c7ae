"""Celery on RabbitMQ (py-amqp) with publisher confirms switched on, for a
like-for-like enqueue comparison: ``broker_transport_options={"confirm_publish":
True}`` makes ``apply_async()`` wait for the broker's confirm, as every lexigram
enqueue does. Celery's default (the shared ``celery-amqp`` adapter) does not
wait. Worker as in the shared adapter: ONE process, --pool=threads.
"""

import _benchlib as B  # the harness's adapters/ folder is on the PYTHONPATH the runner sets
from celery import Celery

SYSTEM, BACKEND = "celery", "rabbitmq-confirms"
VHOST = "bench_celery_confirms"
URL = B.amqp_url(VHOST)
CONCURRENCY = {"noop_drain": 50, "sleep_drain": 100, "latency": 50}
NOTES = "confirm_publish=True; worker --pool=threads -c concurrency; no result backend"

app = Celery("bench", broker=URL)
app.conf.task_ignore_result = True
app.conf.broker_transport_options = {"confirm_publish": True}


@app.task(name="bench_job")
def bench_job(mode, enq=None):
    B.sync_job(mode, enq)


def clean():
    B.rabbit_reset_vhost(VHOST)


def enqueue(kind, enq=None):
    bench_job.apply_async((kind, enq))


def worker_main(scenario, concurrency):
    app.worker_main(
        ["worker", "--pool=threads", f"--concurrency={concurrency}", "--loglevel=WARNING"]
    )


if __name__ == "__main__":
    B.main(globals())
