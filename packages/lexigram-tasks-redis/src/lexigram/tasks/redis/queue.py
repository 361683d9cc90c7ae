"""RedisTaskQueue: at-least-once jobs on Redis, stored in rq's key layout.

Every operation is one Lua script run by SHA, so enqueueing, leasing a batch
of jobs (with delayed-job promotion and lapsed-lease recovery), acking a
batch and settling a failure are each a single round trip. See
``docs/backends/redis.md`` for the key layout and what rq's tooling shows.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

from lexigram.tasks.concurrency import SLOTS_HEADER
from lexigram.tasks.errors import BackendConnectionError, ConfigurationError
from lexigram.tasks.job import DEFAULT_MAX_JOB_BYTES, Job
from lexigram.tasks.protocol import (
    BaseTaskQueue,
    Capability,
    DeadLetter,
    Delivery,
    QueueCounts,
)
from lexigram.tasks.redis import _scripts
from lexigram.tasks.redis._cluster import ClusterScript, is_cluster, is_cluster_url
from lexigram.tasks.redis._connection import open_client, reported, resolve_url
from lexigram.tasks.redis._control import JobControl
from lexigram.tasks.redis._sentinel import SentinelAddress, redact
from lexigram.tasks.redis._settling import Settling
from lexigram.tasks.redis.keys import QueueKeys
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

#: rq's default ``result_ttl``: finished jobs stay visible this long.
DEFAULT_FINISHED_TTL = 500.0
#: rq's default ``failure_ttl`` (one year): dead letters are kept this long.
DEFAULT_FAILURE_TTL = 365 * 24 * 3600.0
#: Jobs per script call in ``enqueue_many`` (bounds how long one call holds the server).
ENQUEUE_CHUNK = 500
#: Redis refuses a string (and a command argument) longer than this by default
#: (``proto-max-bulk-len``), so ``max_job_bytes`` cannot exceed it.
REDIS_MAX_STRING = 512 * 1024 * 1024
# BLPOP treats 0 as "forever"; never block for less than this.
_MIN_BLOCK = 0.01


class RedisTaskQueue(Settling, BaseTaskQueue, JobControl):
    """A Redis-backed queue whose jobs rq's tooling can see.

    ``redis_url`` accepts ``redis://``, ``rediss://`` (TLS) and ``unix://``
    URLs, and ``redis+sentinel://`` for a master found through Redis
    Sentinel (or ``sentinels=`` and ``service_name=`` with ``redis_url``
    giving the credentials and database); see ``docs/scale.md``. With
    ``wait_replicas=N`` an enqueue returns once N replicas hold the job
    (Redis's WAIT, up to ``wait_timeout`` seconds), so a failover cannot
    lose it. Finished jobs stay in rq's finished registry (cancelled ones in
    its canceled registry) for ``finished_ttl`` seconds (0 deletes them at
    once); dead letters stay ``failure_ttl`` seconds. Jobs can be looked up,
    listed, cancelled and report progress, and workers register themselves
    (:class:`~lexigram.tasks.control.JobControlProtocol`).
    ``socket_timeout`` bounds every read and write (off by default: TCP
    keepalive finds dead peers, and a blocking dequeue then never trips it).
    Pass ``client=`` to share an existing ``redis.asyncio.Redis`` (the queue
    then leaves closing it to you).

    On Redis Cluster (a ``redis+cluster://`` URL, or a ``RedisCluster`` as
    ``client=``) every key of the queue carries the hash tag ``{queue_name}``;
    ``shards=N`` spreads the queue over N tags (``{queue_name:0}`` ...), so N
    slots and as many masters share its load (an instance of the subclass
    :class:`~lexigram.tasks.redis._shards.ShardedRedisTaskQueue`). See
    ``docs/scale.md``, "Redis Cluster".

    An enqueue refuses a job whose JSON is over ``max_job_bytes``
    (:class:`~lexigram.tasks.errors.JobTooLargeError`); a URL with another
    scheme raises :class:`~lexigram.tasks.errors.ConfigurationError` here,
    and a server that stops answering gives
    :class:`~lexigram.tasks.errors.BackendConnectionError` from any call.
    """

    system = "redis"
    capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.PRIORITY,
            Capability.UNIQUE,
            Capability.INSPECT,
            Capability.CANCEL,
            Capability.WORKERS,
            Capability.ATTEMPTS,
        }
    )

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379/0",
        queue_name: str = "default",
        *,
        sentinels: Sequence[SentinelAddress] | None = None,
        service_name: str | None = None,
        finished_ttl: float = DEFAULT_FINISHED_TTL,
        failure_ttl: float = DEFAULT_FAILURE_TTL,
        connect_timeout: float = 5.0,
        socket_timeout: float | None = None,
        max_connections: int | None = None,
        max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        shards: int = 1,
        client: Redis | None = None,
    ) -> None:
        redis_url = resolve_url(redis_url, sentinels, service_name)
        self.cluster = is_cluster_url(redis_url) or (client is not None and is_cluster(client))
        self.shards = _check_shards(shards, queue_name, cluster=self.cluster)
        if finished_ttl < 0 or failure_ttl <= 0:
            raise ValueError("finished_ttl must be >= 0 and failure_ttl > 0")
        if not 1 <= max_job_bytes <= REDIS_MAX_STRING:
            raise ValueError(
                f"max_job_bytes must be between 1 and {REDIS_MAX_STRING:,} "
                f"(Redis's largest string), got {max_job_bytes:,}"
            )
        if wait_replicas < 0 or wait_timeout <= 0:
            raise ValueError(
                f"wait_replicas must be >= 0 and wait_timeout > 0, "
                f"got {wait_replicas} and {wait_timeout}"
            )
        self.redis_url = redis_url
        self.queue_name = queue_name
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self.finished_ttl = finished_ttl
        self.failure_ttl = failure_ttl
        self.connect_timeout = connect_timeout
        self.socket_timeout = socket_timeout
        self.max_connections = max_connections
        self.max_job_bytes = max_job_bytes
        self._prepared: dict[str, _scripts.PreparedScript] = {}
        self._held: _scripts.HeldConnection | None = None
        self._use_keys(QueueKeys.for_queue(queue_name, tag=queue_name if self.cluster else None))
        self._client: Redis | None = client
        self._owns_client = client is None
        # Set when a lease found the queue empty: when (monotonic) the next
        # delayed job or lease falls due. dequeue then waits without first
        # asking again, since any new job leaves a wake-up token.
        self._idle_until: float | None = None
        # The concurrency limiter's key prefix and the worker's holder prefix, once a
        # worker has its lease take the slots its jobs name (take_slots_on_lease).
        self._slot_args: list[str] = []

    def __new__(cls, *args: Any, shards: int = 1, **kwargs: Any) -> RedisTaskQueue:
        if cls is RedisTaskQueue and shards > 1:
            from lexigram.tasks.redis._shards import ShardedRedisTaskQueue

            cls = ShardedRedisTaskQueue
        return super().__new__(cls)

    def _use_keys(self, keys: QueueKeys) -> None:
        """Work on the queue (or shard) whose keys are ``keys``."""
        self.keys = keys
        self._key_list = keys.as_list()
        self._head = [keys.job_prefix, self.queue_name]
        self._prepared.clear()

    def __repr__(self) -> str:
        return (
            f"RedisTaskQueue(redis_url={redact(self.redis_url)!r}, queue_name={self.queue_name!r})"
        )

    @property
    def client(self) -> Redis:
        """The redis-py client (after :meth:`connect`)."""
        if self._client is None:
            raise RuntimeError(f"{self!r} is not connected: call 'await queue.connect()' first")
        return self._client

    # -- lifecycle -------------------------------------------------------------

    async def connect(self) -> None:
        if self._client is None:
            options: dict[str, Any] = {
                "socket_connect_timeout": self.connect_timeout,
                "socket_timeout": self.socket_timeout,
            }
            if self.max_connections is not None:
                options["max_connections"] = self.max_connections
            self._client = await open_client(self.redis_url, **options)
            self._owns_client = True
        with reported(self.redis_url):
            if self.cluster:  # SCRIPT LOAD goes to every master
                for script in _scripts.SCRIPTS.values():
                    await self._client.script_load(script.source)
            else:
                await _scripts.load_all(self._client)

    async def disconnect(self) -> None:
        client, self._client = self._client, None
        held, self._held = self._held, None
        if held is not None:
            await held.release()
        if client is not None and self._owns_client:
            await client.aclose()

    # -- producing -------------------------------------------------------------

    async def _enqueue_encoded(self, job: Job, data: bytes) -> str:
        return _holders(await self._store(self._enqueue_args(job, data)), [job])[0]

    async def _enqueue_many_encoded(self, encoded: Sequence[tuple[Job, bytes]]) -> list[str]:
        # Only a lost connection between two chunks can leave part of the
        # batch stored (sending the same jobs again is safe).
        chunks = [
            encoded[start : start + ENQUEUE_CHUNK]
            for start in range(0, len(encoded), ENQUEUE_CHUNK)
        ]
        calls = [
            [arg for job, data in chunk for arg in self._enqueue_args(job, data)]
            for chunk in chunks
        ]
        holders: list[str] = []
        for chunk, args in zip(chunks, calls, strict=True):
            holders += _holders(await self._store(args), [job for job, _ in chunk])
        return holders

    async def _store(self, args: list[Any]) -> Any:
        """Run the enqueue script on the jobs' ``args``, stamped with this
        process's clock as rq stamps its jobs; with ``wait_replicas``, return
        once that many replicas have the jobs, or raise
        :class:`BackendConnectionError` (the jobs are stored on the master, but
        a failover now could lose them)."""
        args = [_scripts.rq_timestamp(time.time()), *args]
        if not self.wait_replicas:
            return await self._run("enqueue", args)
        script = self._script("enqueue")
        with reported(self.redis_url):
            ids, confirmed = await script.call_then_wait(
                args, self.wait_replicas, self.wait_timeout
            )
        if confirmed < self.wait_replicas:
            raise BackendConnectionError(
                f"{redact(self.redis_url)}: {confirmed} of {self.wait_replicas} replica(s) "
                f"confirmed the enqueue within {self.wait_timeout}s; the job is on the master "
                "but a failover now could lose it (enqueueing it again is safe)"
            )
        return ids

    @property
    def lease_takes_slots(self) -> bool:
        """Whether a worker's lease can take the concurrency slots a job names in its
        ``lexigram-slots`` header (the enqueue then stores them): not on a cluster, where
        the semaphores may live on another master."""
        return not self.cluster

    def take_slots_on_lease(self, key_prefix: str, holder_prefix: str) -> bool:
        """Have this queue's leases take the slots their jobs name, as
        :class:`~lexigram.tasks.redis.RedisConcurrencyLimiter` keeps them under
        ``key_prefix``, for holder ``holder_prefix + job id``; False when they cannot
        (a cluster, or a prefix the limiter would have to escape)."""
        if self.cluster or any(c in key_prefix + holder_prefix for c in "%\t\n"):
            return False
        self._slot_args = [key_prefix, holder_prefix]
        return True

    def stop_taking_slots(self) -> None:
        """Undo :meth:`take_slots_on_lease` (its worker's limiter is closing)."""
        self._slot_args = []

    @property
    def ack_releases_slots(self) -> bool:
        """Whether an ack gives back the slots its job's lease took (while leases take
        them): the worker then queues no release of its own for a succeeded job."""
        return bool(self._slot_args)

    def _enqueue_args(self, job: Job, data: bytes) -> list[Any]:
        """The enqueue script's eight arguments for ``job`` (see enqueue.lua)."""
        run_at = repr(float(job.run_at)) if job.run_at is not None else "0"
        slots = job.headers.get(SLOTS_HEADER, "") if job.headers else ""
        if slots and ("%" in job.id or "\t" in job.id or "\n" in job.id):
            slots = ""  # a holder id the limiter would escape: the worker takes them
        dedup = job.dedup_key or ""
        return [job.id, data, job.task, job.priority, run_at, dedup, job.attempt, slots]

    async def push_raw(self, payload: bytes, job_id: str | None = None) -> str:
        """Store ``payload`` byte for byte as a foreign producer would (for tests of bad input).

        The job hash is written under ``job_id`` (a fresh id by default) and
        the id pushed onto rq's queue list, as ``docs/backends/redis.md``
        describes for non-Python producers.
        """
        job_id = job_id or uuid.uuid4().hex
        client = self.client
        with reported(self.redis_url):
            await self._push_raw(client, payload, job_id)
        return job_id

    async def _push_raw(self, client: Redis, payload: bytes, job_id: str) -> None:
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.keys.job(job_id),
                mapping={"data": payload, "status": "queued", "origin": self.queue_name},
            )
            pipe.rpush(self.keys.ready, job_id)
            pipe.sadd(self.keys.queues, self.keys.ready)
            await pipe.execute()

    # -- consuming -------------------------------------------------------------

    async def dequeue(
        self, *, max_jobs: int = 1, lease_seconds: float = 30.0, wait: float = 0.0
    ) -> list[Delivery]:
        with reported(self.redis_url):
            return await self._dequeue(max_jobs, lease_seconds, wait)

    async def _dequeue(self, max_jobs: int, lease_seconds: float, wait: float) -> list[Delivery]:
        lease = self._script("lease")
        deadline = time.monotonic() + wait
        args = self._lease_args(max_jobs, lease_seconds)
        if self._idle_until is None or wait < _MIN_BLOCK:
            deliveries = self._leased(await lease(args))
            if deliveries or wait < _MIN_BLOCK:
                return deliveries
        else:
            # The last lease emptied the queue, so go straight to waiting; but
            # first let the jobs this worker was just handed start running.
            await asyncio.sleep(0)
        while True:
            remaining = deadline - time.monotonic()
            if remaining < _MIN_BLOCK:
                return []
            block = min(remaining, (self._idle_until or math.inf) - time.monotonic())
            if self.socket_timeout is not None:
                block = min(block, self.socket_timeout / 2)  # a read must not time out
            # Sleep on the wake-up list until an enqueue (or the next due job)
            # and lease in the same round trip: the script runs the moment
            # BLPOP returns, so an idle worker picks a new job up at once.
            args[2:4] = _scripts.clock_hint()
            if isinstance(lease, ClusterScript):
                reply = await lease.after_blpop(self.keys.wake, max(block, _MIN_BLOCK), args)
            else:
                reply = await _scripts.run_after_blpop(
                    lease, self.keys.wake, max(block, _MIN_BLOCK), args
                )
            deliveries = self._leased(reply)
            if deliveries:
                return deliveries

    @property
    def acks_ride_with_lease(self) -> bool:
        """Whether :meth:`dequeue_after_ack` sends the acks and the lease in one write
        (not on a cluster, where the jobs may live on another master)."""
        return not self.cluster

    async def dequeue_after_ack(
        self,
        acks: list[Delivery],
        *,
        max_jobs: int = 1,
        lease_seconds: float = 30.0,
        wait: float = 0.0,
    ) -> tuple[list[Delivery], bool]:
        """:meth:`dequeue`, with ``acks`` acked in the same write (and the concurrency
        releases the acks carry): one round trip for both. Returns the deliveries and
        whether the ack went through; acking again is harmless."""
        lease, ack = self._script("lease"), self._script("ack")
        taken = self._take_releases(ack)
        packed = b"".join(
            [
                lease.pack(self._lease_args(max_jobs, lease_seconds)),
                ack.pack(self._ack_args(acks)),
                *(call for _, (_, call) in taken),
            ]
        )
        try:
            with reported(self.redis_url):
                leased, acked, *released = await _scripts.on_connection(
                    lease.client, packed, replies=2 + len(taken), errors=True, held=lease.held
                )
        except BaseException:
            self._put_back(taken)
            raise
        if any(isinstance(reply, ResponseError) for reply in released):
            self._put_back(taken)
        lost = isinstance(leased, NoScriptError)  # after a SCRIPT FLUSH: dequeue loads it
        if isinstance(leased, ResponseError) and not lost:
            raise leased
        deliveries = [] if lost else self._leased(leased)
        if not deliveries and (lost or wait >= _MIN_BLOCK):
            deliveries = await self.dequeue(
                max_jobs=max_jobs, lease_seconds=lease_seconds, wait=wait
            )
        return deliveries, not isinstance(acked, ResponseError)

    def _lease_args(self, max_jobs: int, lease_seconds: float) -> list[Any]:
        """The lease script's arguments (see lease.lua)."""
        return [max_jobs, repr(float(lease_seconds)), *_scripts.clock_hint(), *self._slot_args]

    def _leased(self, reply: list[Any]) -> list[Delivery]:
        """The deliveries of a lease script's reply; notes whether the queue is now empty."""
        due = float(reply[-1])
        if due == -2:
            self._idle_until = None  # jobs are left: lease again before waiting
        else:
            self._idle_until = math.inf if due < 0 else time.monotonic() + due
        return [self._delivery(item) for item in reply[:-1]]

    def _delivery(self, item: bytes) -> Delivery:
        # "<token> <attempt> <status> <len(id)> <id><payload>" (see lease.lua)
        token, attempt, status, id_length, rest = item.split(b" ", 4)
        raw_id, data = rest[: int(id_length)], rest[int(id_length) :]
        key_id = raw_id.decode(errors="replace")
        lease = token + b" " + raw_id
        if status == b"1":
            problem = (
                f"queue entry {key_id!r} has no job stored at {self.keys.job(key_id)!r}; "
                "a producer must write the job hash before pushing its id"
            )
            return Delivery(None, data, lease, problem)
        delivery = self.parse_delivery(data, lease, attempt=int(attempt), stored_as=key_id)
        if status != b"0":
            delivery.slots = status == b"2"  # the slots its lx_slots names: taken, or one full
        return delivery

    # -- inspecting ------------------------------------------------------------

    async def counts(self) -> QueueCounts:
        ready, delayed, running, failed = await self._run("counts", [])
        return QueueCounts(ready=ready, delayed=delayed, running=running, failed=failed)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        reply = await self._run("dead_letters", [limit])
        letters = []
        for i in range(0, len(reply), 5):
            raw_id, payload, reason, failed_at, valid = reply[i : i + 5]
            job_id = raw_id.decode() if valid == b"1" else None
            letters.append(DeadLetter(payload, reason.decode(), job_id, float(failed_at)))
        return letters

    async def purge(self) -> int:
        """Delete this queue and every job in it (ready, delayed, running, finished, failed).

        Returns how many jobs it deleted.
        """
        with reported(self.redis_url):
            return await self._purge(self.client)

    async def _purge(self, client: Redis) -> int:
        keys = self.keys
        async with client.pipeline(transaction=False) as pipe:
            pipe.lrange(keys.ready, 0, -1)
            for zset in (keys.scheduled, keys.leases, keys.finished, keys.failed, keys.canceled):
                pipe.zrange(zset, 0, -1)
            listed = await pipe.execute()
        ids = {raw.decode() for group in listed for raw in group}
        job_keys = [keys.job(job_id) for job_id in ids]
        async with client.pipeline(transaction=False) as pipe:
            for start in range(0, len(job_keys), 1000):
                pipe.delete(*job_keys[start : start + 1000])
            pipe.delete(*keys.queue_owned(), keys.workers)
            pipe.srem(keys.queues, keys.ready)
            deleted = await pipe.execute()
        return sum(deleted[:-2])  # the job-key DELETEs, not the queue's own keys

    async def _run(self, name: str, args: list[Any]) -> Any:
        with reported(self.redis_url):
            return await self._script(name)(args)

    def _script(self, name: str) -> _scripts.PreparedScript:
        """Script ``name`` prepared for this queue and client (again if either changed)."""
        client, script = self.client, _scripts.SCRIPTS[name]
        prepared = self._prepared.get(name)
        if prepared is None or prepared.client is not client or prepared.script is not script:
            if self.cluster:
                prepared = ClusterScript(client, name, self._key_list, self._head)
            else:
                prepared = _scripts.PreparedScript(
                    client, name, self._key_list, self._head, self._held_connection(client)
                )
            self._prepared[name] = prepared
        return prepared

    def _held_connection(self, client: Redis) -> _scripts.HeldConnection | None:
        """The connection this queue's scripts share, on a pool of its own whose
        size the user left to redis-py (a pool sized on purpose keeps all of it)."""
        capped = self.max_connections is not None or _scripts.pool_sized_in(self.redis_url)
        if not self._owns_client or capped:
            return None
        if self._held is None or self._held.client is not client:
            self._held = _scripts.HeldConnection(client)
        return self._held


def _holders(reply: Any, jobs: Sequence[Job]) -> list[str]:
    """The enqueue script's reply as job ids: 1 when its one job holds its own id."""
    if reply == 1:
        return [jobs[0].id]
    return [raw.decode() for raw in reply]


# __new__ above picks the class; the constructor's keywords (the configuration
# keys) are __init__'s, so that is the signature inspect and the config see.
_INIT = inspect.signature(RedisTaskQueue.__init__)
RedisTaskQueue.__signature__ = _INIT.replace(  # type: ignore[attr-defined]
    parameters=list(_INIT.parameters.values())[1:], return_annotation=inspect.Signature.empty
)


def _check_shards(shards: int, queue_name: str, *, cluster: bool) -> int:
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    if shards > 1 and not cluster:
        raise ConfigurationError(
            f"shards={shards} needs Redis Cluster (a redis+cluster:// URL): on one server "
            "every shard would live on the same machine"
        )
    if cluster and ("{" in queue_name or "}" in queue_name):
        raise ConfigurationError(
            f"queue name {queue_name!r}: on Redis Cluster it becomes the keys' hash tag "
            "and may not contain '{' or '}'"
        )
    return shards
