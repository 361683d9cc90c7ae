"""Where a queue's data lives in Redis: rq's key layout, plus a few keys of our own.

The key names come from the rq library itself (``Queue.key``, the
registries' ``.key``, ``Job.key_for``), so they follow rq, including its
``RQ_KEY_PREFIX`` setting, and rq's tooling finds lexigram jobs where it
looks for its own.

On Redis Cluster a script may touch only keys of one hash slot, so there a
queue (or each shard of one) names its keys after a hash tag: rq's names
for the queue ``{tag}`` (``rq:queue:{tag}``, ``rq:wip:{tag}`` ...), job
hashes under ``rq:job:{tag}:``, and a set of its own in place of rq's
shared set of queues. rq's tooling does not read that layout.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, replace
from functools import lru_cache

from rq import Queue
from rq.job import Job as RQJob
from rq.registry import (
    CanceledJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

import redis

#: Prefix of the keys rq has no equivalent for (leases, priorities, wake-ups ...).
OWN_PREFIX = "lexigram:queue:"
#: Prefix of every job hash in rq's layout, as the scripts need it.
JOB_PREFIX: str = RQJob.redis_job_namespace_prefix
# How many of QueueKeys' fields the scripts take (the fields after them are not KEYS).
_SCRIPT_KEYS = 12


@lru_cache(maxsize=1)
def _naming_connection() -> redis.Redis:
    # rq's Queue wants a connection object to build its names; nothing is sent
    # through this one (redis-py connects lazily, on the first command).
    return redis.Redis()


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """Every key of one queue, in the order the Lua scripts expect them (``KEYS[1..12]``)."""

    #: rq's queue list: ids of ready jobs, highest priority first (``Queue.key``).
    ready: str
    #: rq's ScheduledJobRegistry: delayed jobs scored by due time.
    scheduled: str
    #: Our lease set: running jobs scored by lease deadline (server clock).
    leases: str
    #: rq's StartedJobRegistry, mirrored for rq's tooling (``{id}:{lease token}``).
    started: str
    #: Ready jobs per priority above 0, to insert priority jobs in order.
    priorities: str
    #: One-token list that blocked consumers wait on (BLPOP).
    wake: str
    #: Dedup key -> id of the pending job holding it.
    dedup: str
    #: rq's FinishedJobRegistry, scored by expiry.
    finished: str
    #: rq's FailedJobRegistry, scored by expiry: our dead letters.
    failed: str
    #: rq's set of known queues (``rq info`` lists these).
    queues: str
    #: Counter that hands out lease tokens.
    sequence: str
    #: rq's CanceledJobRegistry, scored by expiry: cancelled jobs.
    canceled: str
    #: Prefix of the job hashes (rq's ``rq:job:``; ``rq:job:{tag}:`` on a cluster).
    job_prefix: str = JOB_PREFIX
    #: Our sorted set of the workers registered on the queue, scored by expiry.
    workers: str = ""

    @classmethod
    def for_queue(cls, name: str, *, tag: str | None = None) -> QueueKeys:
        """The keys of queue ``name``: rq's layout, or with ``tag`` the cluster layout
        whose every key (job hashes included) carries the hash tag ``{tag}``."""
        if tag is not None:
            return cls._tagged("{" + tag + "}")
        rq_queue = Queue(name, connection=_naming_connection())
        own = f"{OWN_PREFIX}{name}:"
        return cls(
            ready=rq_queue.key,
            scheduled=ScheduledJobRegistry(queue=rq_queue).key,  # type: ignore[no-untyped-call]
            leases=own + "leases",
            started=StartedJobRegistry(queue=rq_queue).key,
            priorities=own + "priorities",
            wake=own + "wake",
            dedup=own + "dedup",
            finished=FinishedJobRegistry(queue=rq_queue).key,
            failed=FailedJobRegistry(queue=rq_queue).key,
            queues=Queue.redis_queues_keys,
            sequence=own + "sequence",
            canceled=CanceledJobRegistry(queue=rq_queue).key,
            workers=own + "workers",
        )

    @classmethod
    def _tagged(cls, tagged: str) -> QueueKeys:
        plain = cls.for_queue(tagged)
        own = f"{OWN_PREFIX}{tagged}:"
        return replace(plain, queues=own + "queues", job_prefix=f"{JOB_PREFIX}{tagged}:")

    def as_list(self) -> list[str]:
        """The keys the scripts take, ``KEYS[1..12]``."""
        return list(astuple(self))[:_SCRIPT_KEYS]

    def job(self, job_id: str) -> str:
        """The hash holding job ``job_id``."""
        return self.job_prefix + job_id

    def worker(self, worker_id: str) -> str:
        """One registered worker's entry (JSON, expiring with its TTL)."""
        return self.workers.removesuffix("workers") + "worker:" + worker_id

    def queue_owned(self) -> list[str]:
        """The keys that belong to this queue alone (not rq's shared set of queues)."""
        return [key for key in self.as_list() if key != self.queues]


def job_key(job_id: str) -> str:
    """The hash holding one job (rq's ``Job.key_for``)."""
    key: str | bytes = RQJob.key_for(job_id)  # bytes in rq 3, str in rq 2
    return key if isinstance(key, str) else key.decode()


def workers_key(queue_name: str) -> str:
    """Our sorted set of the workers registered on a queue, scored by expiry."""
    return f"{OWN_PREFIX}{queue_name}:workers"


def worker_key(queue_name: str, worker_id: str) -> str:
    """One registered worker's entry (JSON, expiring with its TTL)."""
    return f"{OWN_PREFIX}{queue_name}:worker:{worker_id}"


def cancel_channel(queue_name: str) -> str:
    """The pub/sub channel on which a queue's cancellations of running jobs are published."""
    return f"lexigram:control:{queue_name}:cancel"
