"""Job sizes on RabbitMQ: ``max_job_bytes`` first, then the broker's own ``max_message_size``."""

from __future__ import annotations

import pytest

from lexigram.tasks.errors import JobTooLargeError
from lexigram.tasks.protocol import QueueCounts
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.testing import make_job

MiB = 2**20
EMPTY = QueueCounts(ready=0, delayed=0, running=0, failed=0)


async def test_a_job_over_the_frame_limit_is_refused_before_the_broker_sees_it(
    queue: RabbitMQTaskQueue,
) -> None:
    """140 MB (over RabbitMQ's 128 MiB limit) with the default max_job_bytes: JobTooLargeError."""
    job = make_job(queue, args=["x" * (140 * MiB)])
    with pytest.raises(JobTooLargeError, match=r"over the limit of 10,485,760 \(max_job_bytes\)"):
        await queue.enqueue(job)
    with pytest.raises(JobTooLargeError):
        await queue.enqueue_many([make_job(queue), job])
    assert await queue.counts() == EMPTY


async def test_the_brokers_refusal_names_the_size_and_the_broker_limit(
    queue: RabbitMQTaskQueue,
) -> None:
    """max_job_bytes raised above the broker's limit: the broker's refusal is reported as
    such (not as an unreachable broker after retries), and the queue keeps working."""
    queue.max_job_bytes = 200 * MiB
    big = make_job(queue, args=["x" * (129 * MiB)])
    pattern = r"is 135,\d{3},\d{3} bytes, over the broker's max_message_size of 134,217,728"
    with pytest.raises(JobTooLargeError, match=pattern) as refused:
        await queue.enqueue(big)
    assert big.id in str(refused.value)
    with pytest.raises(JobTooLargeError, match=pattern):
        await queue.enqueue_many([make_job(queue), big, make_job(queue)])

    small = make_job(queue)
    await queue.enqueue(small)  # the publishing channel the broker closed is back
    ids: set[str | None] = set()
    while batch := await queue.dequeue(max_jobs=10, wait=1.0):
        ids |= {delivery.job_id for delivery in batch}
    # A batch is written before its confirms are awaited: jobs sent before the refused
    # one may be stored (docs/backends/rabbitmq.md, Sizes). The refused one never is.
    assert small.id in ids
    assert big.id not in ids
