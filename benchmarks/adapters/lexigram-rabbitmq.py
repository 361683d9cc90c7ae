"""lexigram-tasks with its RabbitMQ backend (RabbitMQTaskQueue on aio-pika).

Worker: ONE process running provider.serve() with TaskProvider(worker_count=
concurrency); the backend's prefetch follows the worker's free slots. Every
publish waits for the broker's confirm (single and bulk enqueue alike);
persistent messages in a durable classic queue (the default: no priorities);
manual acks after the job. No result store. Compare the single-enqueue rate
with the dramatiq-rabbitmq-confirms and celery-amqp-confirms adapters: the
peers' defaults do not wait for the broker's confirm.

Variant ``v2`` (``lexigram-rabbitmq:v2``) declares the queue with
``queue_arguments={"x-queue-version": 2}``, classic queue storage version 2,
to measure that option against the default.
"""

import _benchlib as B  # the harness's adapters/ folder is on the PYTHONPATH the runner sets

from lexigram.tasks import TaskProvider
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue

SYSTEM, BACKEND = "lexigram", "rabbitmq"
VHOST = "bench_lexigram"
URL = B.amqp_url(VHOST)
CONCURRENCY = {"noop_drain": 50, "sleep_drain": 100, "latency": 50}
NOTES = (
    "TaskProvider(worker_count=concurrency).serve(); RabbitMQTaskQueue classic queue, "
    "publisher confirms on every enqueue, prefetch = free worker slots; no result store"
)

provider: TaskProvider
bench_job = None


def configure(args):
    global provider, bench_job
    worker = args.mode == "_worker"
    extra = {"x-queue-version": 2} if args.variant == "v2" else {}
    queue = RabbitMQTaskQueue(amqp_url=URL, queue_name="bench", queue_arguments=extra)
    provider = TaskProvider(queue=queue, worker_count=args.concurrency if worker else 1)

    @provider.task(name="bench_job")
    async def _job(mode, enq=None):
        await B.async_job(mode, enq)

    bench_job = _job


async def clean():
    await provider.disconnect()
    B.rabbit_reset_vhost(VHOST)
    await provider.connect()


async def teardown():
    await provider.disconnect()


async def enqueue(kind, enq=None):
    await bench_job.enqueue(kind, enq)


async def enqueue_bulk(kind, n):
    for start in range(0, n, 1000):
        await provider.enqueue_many([bench_job.job(kind) for _ in range(min(1000, n - start))])


async def queued_count():
    return (await provider.queue.counts()).ready


async def worker_main(scenario, concurrency):
    await provider.serve()


if __name__ == "__main__":
    B.main(globals())
