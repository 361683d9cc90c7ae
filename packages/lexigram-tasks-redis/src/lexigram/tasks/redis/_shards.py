"""One logical queue spread over several hash tags of a Redis Cluster (``shards=N``).

Each shard is a whole queue of its own, a plain :class:`RedisTaskQueue`
whose keys carry the tag ``{name:i}``, so its scripts run on the master of
that slot and N shards put the queue on up to N masters. The logical queue
sends every call to the shards:

- a job goes to the shard of ``crc32(dedup_key or id) % N``, so one dedup
  key always meets its holder, and a job is found again from its id (first
  in the id's shard, then in the others, where a job with a dedup key
  lives);
- a worker leases from the shards in turn, starting at the one after its
  last; when all are empty it blocks on each shard's wake-up list for
  :data:`BLOCK_SLICE` seconds in turn, so an idle worker picks a job up at
  most about that long after it arrives;
- a delivery's token is ``(shard, token)``: acks, nacks and lease
  extensions go to the shard that leased the job;
- counts, dead letters, purges and listings add the shards up.

Order holds within a shard only: jobs come out of each shard first in,
first out, but the shards take turns. So a sharded queue does not declare
:attr:`~lexigram.tasks.protocol.Capability.PRIORITY`: a job with a priority
is refused (``CapabilityNotSupportedError``) rather than run out of order.

Workers register, and cancellations are published, on the logical queue's
own keys (tag ``{name}``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import time
import uuid
import zlib
from collections.abc import Sequence
from typing import Any

from lexigram.tasks.control import (
    CancelOutcome,
    JobInfo,
    JobPage,
    JobState,
    Progress,
    decode_cursor,
    encode_cursor,
)
from lexigram.tasks.errors import BackendConnectionError
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Capability, DeadLetter, Delivery, QueueCounts
from lexigram.tasks.redis.keys import QueueKeys
from lexigram.tasks.redis.queue import RedisTaskQueue

#: Seconds an idle worker blocks on one shard before it looks at the next.
BLOCK_SLICE = 0.1
# Below this, a wait is not worth a blocking call (as RedisTaskQueue's own).
_MIN_BLOCK = 0.01


class ShardedRedisTaskQueue(RedisTaskQueue):
    """A :class:`RedisTaskQueue` with ``shards > 1``: the same API over N shard queues."""

    capabilities = RedisTaskQueue.capabilities - {Capability.PRIORITY}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = {
            "finished_ttl": self.finished_ttl,
            "failure_ttl": self.failure_ttl,
            "max_job_bytes": self.max_job_bytes,
            "wait_replicas": self.wait_replicas,
            "wait_timeout": self.wait_timeout,
        }
        self.lanes: list[RedisTaskQueue] = []
        for index in range(self.shards):
            lane = RedisTaskQueue(self.redis_url, self.queue_name, **options)  # type: ignore[arg-type]
            lane._use_keys(QueueKeys.for_queue(self.queue_name, tag=f"{self.queue_name}:{index}"))
            self.lanes.append(lane)
        self._turn = 0

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, shards={self.shards})"

    # -- lifecycle -------------------------------------------------------------

    async def connect(self) -> None:
        await super().connect()
        for lane in self.lanes:
            lane._client, lane._owns_client = self.client, False

    async def disconnect(self) -> None:
        for lane in self.lanes:
            lane._client = None
        await super().disconnect()

    # -- producing -------------------------------------------------------------

    def shard_of(self, key: str) -> int:
        """The shard that holds the job with this id (or dedup key)."""
        return zlib.crc32(key.encode()) % self.shards

    def _lane_of(self, job: Job) -> int:
        return self.shard_of(job.dedup_key or job.id)

    async def _enqueue_encoded(self, job: Job, data: bytes) -> str:
        return await self.lanes[self._lane_of(job)]._enqueue_encoded(job, data)

    async def _enqueue_many_encoded(self, encoded: Sequence[tuple[Job, bytes]]) -> list[str]:
        groups: dict[int, list[int]] = {}
        for position, (job, _) in enumerate(encoded):
            groups.setdefault(self._lane_of(job), []).append(position)
        replies = await asyncio.gather(
            *(
                self.lanes[lane]._enqueue_many_encoded([encoded[i] for i in positions])
                for lane, positions in groups.items()
            )
        )
        holders = [""] * len(encoded)
        for positions, ids in zip(groups.values(), replies, strict=True):
            for position, holder in zip(positions, ids, strict=True):
                holders[position] = holder
        return holders

    async def push_raw(self, payload: bytes, job_id: str | None = None) -> str:
        """As :meth:`RedisTaskQueue.push_raw`, into the shard of ``job_id``."""
        job_id = job_id or uuid.uuid4().hex
        return await self.lanes[self.shard_of(job_id)].push_raw(payload, job_id)

    # -- consuming -------------------------------------------------------------

    def take_slots_on_lease(self, key_prefix: str, holder_prefix: str) -> bool:
        """As :meth:`RedisTaskQueue.take_slots_on_lease`, for every shard's leases."""
        return all(lane.take_slots_on_lease(key_prefix, holder_prefix) for lane in self.lanes)

    def stop_taking_slots(self) -> None:
        for lane in self.lanes:
            lane.stop_taking_slots()

    async def dequeue(
        self, *, max_jobs: int = 1, lease_seconds: float = 30.0, wait: float = 0.0
    ) -> list[Delivery]:
        deadline = time.monotonic() + wait
        start = self._turn
        self._turn = (start + 1) % self.shards
        order = [(start + k) % self.shards for k in range(self.shards)]
        first = True
        while True:
            failed: list[BackendConnectionError] = []
            for index in order:
                remaining = deadline - time.monotonic()
                if not first and remaining < _MIN_BLOCK:
                    return []
                block = 0.0 if first else min(BLOCK_SLICE, remaining)
                try:
                    got = await self.lanes[index].dequeue(
                        max_jobs=max_jobs, lease_seconds=lease_seconds, wait=block
                    )
                except BackendConnectionError as exc:
                    # A shard whose master is down (a failover under way) must
                    # not stop the others: go on, and fail only if all failed.
                    failed.append(exc)
                    continue
                if got:
                    self._turn = (index + 1) % self.shards
                    return _tagged(index, got)
            if len(failed) == self.shards:
                raise failed[-1]
            if first and wait <= 0:
                return []
            first = False

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        await asyncio.gather(
            *(self.lanes[lane].ack_many(group) for lane, group in _by_lane(deliveries).items())
        )

    async def ack(self, delivery: Delivery) -> None:
        await self.ack_many([delivery])

    async def nack(
        self, delivery: Delivery, *, requeue: bool, delay: float = 0.0, reason: str = ""
    ) -> None:
        lane, inner = _untagged(delivery)
        await self.lanes[lane].nack(inner, requeue=requeue, delay=delay, reason=reason)

    async def extend_lease(self, deliveries: Sequence[Delivery], lease_seconds: float) -> None:
        await asyncio.gather(
            *(
                self.lanes[lane].extend_lease(group, lease_seconds)
                for lane, group in _by_lane(deliveries).items()
            )
        )

    # -- inspecting ------------------------------------------------------------

    async def counts(self) -> QueueCounts:
        each = await asyncio.gather(*(lane.counts() for lane in self.lanes))
        return QueueCounts(
            ready=sum(c.ready for c in each),
            delayed=sum(c.delayed for c in each),
            running=sum(c.running for c in each),
            failed=sum(c.failed for c in each),
        )

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        each = await asyncio.gather(*(lane.dead_letters(limit) for lane in self.lanes))
        return list(heapq.merge(*each, key=lambda letter: letter.failed_at))[:limit]

    async def purge(self) -> int:
        deleted = await asyncio.gather(*(lane.purge() for lane in self.lanes))
        return sum(deleted) + await super().purge()

    def _homes(self, job_id: str) -> list[RedisTaskQueue]:
        """The shards in the order to look for ``job_id``: its own first."""
        home = self.shard_of(job_id)
        return [self.lanes[(home + k) % self.shards] for k in range(self.shards)]

    async def get_job(self, job_id: str) -> JobInfo | None:
        for lane in self._homes(job_id):
            info = await lane.get_job(job_id)
            if info is not None:
                return info
        return None

    async def cancel(self, job_id: str) -> CancelOutcome:
        for lane in self._homes(job_id):
            outcome = await lane.cancel(job_id)
            if outcome is not CancelOutcome.NOT_FOUND:
                return outcome
        return CancelOutcome.NOT_FOUND

    async def cancel_requested(self, deliveries: Sequence[Delivery]) -> set[str]:
        found = await asyncio.gather(
            *(self.lanes[lane].cancel_requested(g) for lane, g in _by_lane(deliveries).items())
        )
        return set().union(*found)

    async def record_progress(self, delivery: Delivery, progress: Progress) -> None:
        lane, inner = _untagged(delivery)
        await self.lanes[lane].record_progress(inner, progress)

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        task: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobPage:
        """The shards' listings one after another; the cursor names the shard and its cursor."""
        lane, inner = _decode(cursor, self.shards)
        jobs: list[JobInfo] = []
        while lane < self.shards:
            page = await self.lanes[lane].list_jobs(
                state=state, task=task, limit=max(1, limit - len(jobs)), cursor=inner
            )
            jobs += page.jobs
            if page.cursor is not None:
                return JobPage(jobs, _encode(lane, page.cursor))
            lane, inner = lane + 1, None
            if len(jobs) >= limit:
                break
        return JobPage(jobs, _encode(lane, None) if lane < self.shards else None)


def _tagged(lane: int, deliveries: list[Delivery]) -> list[Delivery]:
    for delivery in deliveries:
        delivery.token = (lane, delivery.token)
    return deliveries


def _untagged(delivery: Delivery) -> tuple[int, Delivery]:
    lane, token = delivery.token
    return lane, dataclasses.replace(delivery, token=token)


def _by_lane(deliveries: Sequence[Delivery]) -> dict[int, list[Delivery]]:
    groups: dict[int, list[Delivery]] = {}
    for delivery in deliveries:
        lane, inner = _untagged(delivery)
        groups.setdefault(lane, []).append(inner)
    return groups


def _encode(lane: int, inner: str | None) -> str:
    return encode_cursor(["shard", lane, inner or ""])


def _decode(cursor: str | None, shards: int) -> tuple[int, str | None]:
    if not cursor:
        return 0, None
    decoded = decode_cursor(cursor)
    if len(decoded) == 3 and decoded[0] == "shard":
        _, lane, inner = decoded
        if isinstance(lane, int) and 0 <= lane < shards and isinstance(inner, str):
            return lane, inner or None
    raise ValueError(f"not a cursor of this listing: {cursor!r}")
