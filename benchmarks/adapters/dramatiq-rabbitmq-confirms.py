"""Dramatiq on RabbitMQ with publisher confirms switched on, for a like-for-like
enqueue comparison: ``RabbitmqBroker(confirm_delivery=True)`` makes ``send()``
wait until the broker has accepted the message, as every lexigram enqueue does.
Dramatiq's default (the shared ``dramatiq-rabbitmq`` adapter) publishes without
waiting. Worker as in the shared adapter: ONE process, worker_threads=concurrency.
"""

import signal
import threading

import _benchlib as B  # the harness's adapters/ folder is on the PYTHONPATH the runner sets
import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

SYSTEM, BACKEND = "dramatiq", "rabbitmq-confirms"
VHOST = "bench_dramatiq_confirms"
URL = B.amqp_url(VHOST)
CONCURRENCY = {"noop_drain": 50, "sleep_drain": 100, "latency": 50}
NOTES = "RabbitmqBroker(confirm_delivery=True); Worker(worker_threads=concurrency); no bulk API"

broker = RabbitmqBroker(url=URL, confirm_delivery=True)
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench_job", queue_name="bench", max_retries=0)
def bench_job(mode, enq=None):
    B.sync_job(mode, enq)


def clean():
    B.rabbit_reset_vhost(VHOST)
    # The reset closed this process's connection and deleted the queue:
    # reconnect and declare it again before the first publish.
    broker.close()
    broker.queues_pending.update(broker.queues)
    for queue_name in list(broker.queues):
        broker.declare_queue(queue_name, ensure=True)


def enqueue(kind, enq=None):
    bench_job.send(kind, enq)


def worker_main(scenario, concurrency):
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    worker = dramatiq.Worker(broker, worker_threads=concurrency)
    worker.start()
    stopping.wait()
    worker.stop(timeout=5000)


if __name__ == "__main__":
    B.main(globals())
