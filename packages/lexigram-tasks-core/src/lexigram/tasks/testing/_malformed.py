"""A message that is not a valid job is dead-lettered with its reason, never lost."""

from __future__ import annotations

import pytest

from lexigram.tasks.protocol import QueueCounts, TaskQueueProtocol
from lexigram.tasks.testing._base import ContractBase
from lexigram.tasks.testing._helpers import collect, make_job

#: Payloads a foreign or buggy producer might write, by test id.
MALFORMED_PAYLOADS = {
    "not-json": b"this is { not json",
    "not-utf8": b"\xff\xfe\x00garbage",
    "json-array": b"[1, 2, 3]",
    "missing-id": b'{"task": "contract.noop", "args": []}',
    "missing-task": b'{"id": "malformed-missing-task", "args": []}',
    "wrong-type": b'{"id": "malformed-wrong-type", "task": "contract.noop", "args": "nope"}',
    "newer-version": b'{"v": 999, "id": "malformed-newer", "task": "contract.noop"}',
    # Valid JSON that Python's reader accepts, but no job can be built from or
    # written back: each used to escape dequeue() or loop on settling.
    "nested-1000-deep": b'{"id": "malformed-deep", "task": "contract.noop", "args": '
    + b"[" * 1000
    + b"]" * 1000
    + b"}",
    "nan": b'{"id": "malformed-nan", "task": "contract.noop", "args": [NaN]}',
    "infinity": b'{"id": "malformed-inf", "task": "contract.noop", "args": [Infinity]}',
    "float-overflow": b'{"id": "malformed-big", "task": "contract.noop", "args": [1e999]}',
    "huge-integer": b'{"id": "malformed-int", "task": "contract.noop", "args": ['
    + b"7" * 5000
    + b"]}",
    "lone-surrogate": b'{"id": "malformed-surrogate", "task": "contract.noop", '
    b'"args": ["file-\\udcff.txt"]}',
}


class MalformedContract(ContractBase):
    """Bad messages come back as ``Delivery(job=None, problem=...)`` and can be dead-lettered."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "payload", list(MALFORMED_PAYLOADS.values()), ids=list(MALFORMED_PAYLOADS)
    )
    async def test_malformed_message_is_dead_lettered_and_consumer_goes_on(
        self, queue: TaskQueueProtocol, payload: bytes
    ) -> None:
        await self.push_raw(queue, payload)
        valid = make_job(queue)
        await queue.enqueue(valid)

        seen_bad = seen_valid = False
        for _ in range(2):
            [delivery] = await collect(queue, 1, lease_seconds=self.lease_seconds * 10)
            if delivery.job is None:
                assert not seen_bad, "the malformed message was delivered twice"
                seen_bad = True
                assert delivery.raw == payload
                assert isinstance(delivery.problem, str)
                assert delivery.problem
                assert delivery.job_id is None
                await queue.nack(delivery, requeue=False, reason=delivery.problem)
            else:
                seen_valid = True
                assert delivery.job.id == valid.id
                await queue.ack(delivery)
        assert seen_bad
        assert seen_valid

        assert await queue.counts() == QueueCounts(ready=0, delayed=0, running=0, failed=1)
        [dead] = await queue.dead_letters()
        assert dead.payload == payload
        assert dead.reason
        assert dead.job_id is None
