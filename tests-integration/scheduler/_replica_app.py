"""One scheduler replica for the multi-process tests (run as a subprocess).

``python _replica_app.py BACKEND STORE QUEUE LOCATION`` runs a scheduler alone
(no workers) that enqueues a per-second template into the ``BACKEND`` queue
named ``QUEUE`` (redis | postgres | rabbitmq), keeping its state in ``STORE``
(redis | postgres | memory) at ``LOCATION`` (a key prefix or a schema). Each
tick it enqueued is printed to stdout as a JSON line. It stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import Any

from lexigram.tasks import TaskProvider
from lexigram.tasks.protocol import TaskQueueProtocol
from lexigram.tasks.scheduler import (
    FiredTick,
    MemoryTemplateStore,
    TaskScheduler,
    TemplateStore,
    scheduled,
)


def env(name: str) -> str:
    return os.environ[f"LEXIGRAM_TEST_{name}"]


@scheduled(cron="* * * * * *", name="per-second", catch_up="skip")
async def heartbeat() -> None:
    """Runs every second (no worker runs it here: the test reads the queue)."""


class ReportingScheduler(TaskScheduler):
    """Prints every tick this replica enqueued, for the test to compare."""

    async def run_due(self, now: float | None = None) -> list[FiredTick]:
        fired = await super().run_due(now)
        for tick in fired:
            record = {"pid": os.getpid(), "fire_time": tick.fire_time, "job_id": tick.job_id}
            print(json.dumps(record), flush=True)
        return fired


def make_queue(backend: str, queue_name: str, location: str) -> TaskQueueProtocol:
    if backend == "redis":
        from lexigram.tasks.redis import RedisTaskQueue

        return RedisTaskQueue(redis_url=env("REDIS_URL"), queue_name=queue_name)
    if backend == "postgres":
        from lexigram.tasks.postgres import PostgresTaskQueue

        return PostgresTaskQueue(
            postgres_dsn=env("POSTGRES_DSN"), queue_name=queue_name, schema=location
        )
    from lexigram.tasks.rabbitmq import RabbitMQTaskQueue

    return RabbitMQTaskQueue(amqp_url=env("AMQP_URL"), queue_name=queue_name)


def make_store(store: str, location: str) -> TemplateStore:
    if store == "redis":
        from lexigram.tasks.scheduler import RedisTemplateStore

        return RedisTemplateStore(env("REDIS_URL"), prefix=location)
    if store == "postgres":
        from lexigram.tasks.scheduler import PostgresTemplateStore

        return PostgresTemplateStore(env("POSTGRES_DSN"), schema=location)
    return MemoryTemplateStore()


def main(argv: list[str]) -> Any:
    backend, store, queue_name, location = argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    provider = TaskProvider(queue=make_queue(backend, queue_name, location), environment="test")
    scheduler = ReportingScheduler(provider, store=make_store(store, location))
    return asyncio.run(scheduler.serve())


if __name__ == "__main__":
    main(sys.argv[1:])
