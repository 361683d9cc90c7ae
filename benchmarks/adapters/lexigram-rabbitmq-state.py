"""lexigram-tasks on RabbitMQ paired with a Redis job state store (job control on).

As ``lexigram-rabbitmq``, with ``state_store={"type": "redis", ...}``: every
enqueue batch, fetched batch and ack batch also makes one Redis call (Lua),
which is the cost of status, listing and cancellation on RabbitMQ. The
store uses Redis db 13 under its own namespace, deleted before each scenario.

(The description of the base adapter follows.)

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

SYSTEM, BACKEND = "lexigram", "rabbitmq-state"
VHOST = "bench_lexigram_state"
STATE_URL = "redis://127.0.0.1:6379/13"
STATE_NAMESPACE = "bench-lexigram-state"
URL = B.amqp_url(VHOST)
CONCURRENCY = {"noop_drain": 50, "sleep_drain": 100, "latency": 50}
NOTES = (
    "TaskProvider(worker_count=concurrency).serve(); RabbitMQTaskQueue classic queue, "
    "publisher confirms on every enqueue, prefetch = free worker slots; no result store; "
    "paired Redis job state store (db 13)"
)

provider: TaskProvider
bench_job = None


def configure(args):
    global provider, bench_job
    worker = args.mode == "_worker"
    extra = {"x-queue-version": 2} if args.variant == "v2" else {}
    store = {"type": "redis", "redis_url": STATE_URL, "namespace": STATE_NAMESPACE}
    queue = RabbitMQTaskQueue(
        amqp_url=URL, queue_name="bench", queue_arguments=extra, state_store=store
    )
    provider = TaskProvider(queue=queue, worker_count=args.concurrency if worker else 1)

    @provider.task(name="bench_job")
    async def _job(mode, enq=None):
        await B.async_job(mode, enq)

    bench_job = _job


async def clean():
    await provider.disconnect()
    B.rabbit_reset_vhost(VHOST)
    await _delete_state()
    await provider.connect()


async def _delete_state():
    from redis.asyncio import Redis

    client = Redis.from_url(STATE_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{STATE_NAMESPACE}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
    finally:
        await client.aclose()


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
