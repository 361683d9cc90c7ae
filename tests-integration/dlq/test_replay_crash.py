"""A process killed between enqueueing a replayed job and removing its record loses nothing.

The child process replays one record through a queue whose ``enqueue``
SIGKILLs the process as soon as the backend has accepted the job. Then:

- the record is still in the storage, on every backend;
- Redis (unique keys): the job is enqueued; replaying again finds it, so one job runs;
- PostgreSQL (queue and storage in one database): enqueue and delete share a
  transaction, which died with the process: no job; replaying again makes one;
- RabbitMQ (no unique keys): the job is enqueued, and replaying again sends a
  second copy with the same job id (documented: at least once).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap
from asyncio.subprocess import PIPE
from typing import TYPE_CHECKING

from lexigram.tasks import DeadLetterQueue, TaskCompletedEvent, TaskProvider
from lexigram.tasks.dlq.testing import make_record
from lexigram.tasks.testing import eventually

if TYPE_CHECKING:
    from conftest import Backend

CHILD = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys

    from lexigram.tasks.dlq import DeadLetterQueue

    spec = json.loads(sys.argv[1])
    kind = spec["kind"]
    if kind == "postgres":
        from lexigram.tasks.dlq import PostgresDeadLetterStorage
        from lexigram.tasks.postgres import PostgresTaskQueue as Queue

        storage = PostgresDeadLetterStorage(spec["dsn"], schema=spec["schema"])
        options = {"postgres_dsn": spec["dsn"], "schema": spec["schema"]}
    else:
        from lexigram.tasks.dlq import RedisDeadLetterStorage

        storage = RedisDeadLetterStorage(spec["redis_url"], prefix=spec["prefix"])
        if kind == "redis":
            from lexigram.tasks.redis import RedisTaskQueue as Queue

            options = {"redis_url": spec["redis_url"]}
        else:
            from lexigram.tasks.rabbitmq import RabbitMQTaskQueue as Queue

            options = {"amqp_url": spec["amqp_url"]}


    class DiesAfterEnqueue(Queue):
        async def enqueue(self, job):
            job_id = await super().enqueue(job)
            print(job_id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # before the record can be removed
            return job_id


    async def main():
        dlq = DeadLetterQueue(storage)
        queue = DiesAfterEnqueue(queue_name=spec["queue_name"], **options)
        await dlq.replay(spec["record_id"], queue)
        print("not killed", flush=True)


    asyncio.run(main())
    """
)


async def test_a_crash_during_replay_loses_nothing(backend: Backend) -> None:
    queue = backend.queue
    record = make_record(task="crash.work", queue=queue.queue_name)
    await backend.storage.put(record)

    spec = json.dumps({**backend.spec, "record_id": record.id})
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, spec, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=60)
    assert child.returncode == -signal.SIGKILL, err.decode()
    first_job_id = out.decode().strip()
    assert first_job_id, err.decode()

    assert await backend.storage.get(record.id) == record, "the record was lost"
    left_by_crash = 0 if backend.name == "postgres" else 1
    await eventually(lambda: _ready(backend, left_by_crash), timeout=10)

    dlq = DeadLetterQueue(backend.storage)
    handle = await dlq.replay(record.id, queue)
    assert handle is not None
    assert handle.id == first_job_id  # a replay of one record always sends the same job id
    assert await backend.storage.get(record.id) is None
    expected = 2 if backend.name == "rabbitmq" else 1
    await eventually(lambda: _ready(backend, expected), timeout=10)

    runs: list[str] = []
    provider = TaskProvider(queue=queue, poll_interval=0.05)
    provider.events.subscribe(TaskCompletedEvent, lambda event: runs.append(event.job.id))

    @provider.task(name="crash.work")
    async def work(*args: object, **kwargs: object) -> None:
        return None

    async with provider:
        await eventually(lambda: len(runs) >= expected, timeout=10)
        await eventually(lambda: _ready(backend, 0), timeout=10)
    assert runs == [first_job_id] * expected


async def _ready(backend: Backend, n: int) -> bool:
    counts = await backend.queue.counts()
    return counts.ready + counts.running == n
