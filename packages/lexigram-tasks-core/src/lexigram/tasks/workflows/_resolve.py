"""Which workflow store goes with a queue.

A workflow's state lives in the queue's own database when the queue is
Redis or PostgreSQL; a RabbitMQ queue uses the database of its job state
store (``state_store=``); a memory queue gets a store in this process.
:func:`use_workflow_store` pairs any queue with a store explicitly, which
every process of the deployment (producers and workers) must then do too.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.protocol import TaskQueueProtocol
from lexigram.tasks.workflows.store import MemoryWorkflowStore, WorkflowStore

__all__ = ["store_for", "use_workflow_store"]

_stores: weakref.WeakKeyDictionary[Any, WorkflowStore] = weakref.WeakKeyDictionary()
_ready: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()

#: A queue or state store class name -> (module, store class) built from it.
_BY_TYPE = {
    "RedisTaskQueue": ("lexigram.tasks.redis.workflows", "RedisWorkflowStore"),
    "RedisJobStateStore": ("lexigram.tasks.redis.workflows", "RedisWorkflowStore"),
    "PostgresTaskQueue": ("lexigram.tasks.postgres.workflows", "PostgresWorkflowStore"),
    "PostgresJobStateStore": ("lexigram.tasks.postgres.workflows", "PostgresWorkflowStore"),
}


def use_workflow_store(queue: TaskQueueProtocol, store: WorkflowStore) -> None:
    """Keep the workflows of ``queue`` in ``store`` (in this process).

    Only needed for a queue that has no store of its own choosing (see the
    module docstring); producers and workers must pair the same way.
    """
    if not isinstance(store, WorkflowStore):
        raise TypeError(f"{store!r} is not a WorkflowStore")
    _stores[queue] = store


def store_for(queue: TaskQueueProtocol) -> WorkflowStore:
    """The workflow store of ``queue``; raises ConfigurationError if it has none."""
    found = _stores.get(queue)
    if found is not None:
        return found
    store = _default_store(queue)
    _stores[queue] = store
    return store


async def connected_store(queue: TaskQueueProtocol) -> WorkflowStore:
    """:func:`store_for`, connected (once per queue object)."""
    store = store_for(queue)
    lock = _ready.get(queue)
    if lock is None:
        lock = _ready[queue] = asyncio.Lock()
    async with lock:
        await store.connect()
    return store


def _default_store(queue: TaskQueueProtocol) -> WorkflowStore:
    if queue.system == "memory":
        return MemoryWorkflowStore()
    source: Any = queue
    if type(queue).__name__ not in _BY_TYPE:
        source = getattr(queue, "state_store", None)  # a RabbitMQ queue's paired store
    name = type(source).__name__ if source is not None else ""
    if name not in _BY_TYPE:
        raise ConfigurationError(
            f"{queue!r} has no workflow store: workflows keep their state in Redis or "
            "PostgreSQL. Use a Redis or PostgreSQL queue, give a RabbitMQ queue a job state "
            "store (state_store={'type': 'redis', 'redis_url': ...}), or pair the queue "
            "with a store in every process: lexigram.tasks.workflows.use_workflow_store("
            "queue, RedisWorkflowStore(...))"
        )
    module_name, class_name = _BY_TYPE[name]
    import importlib

    module = importlib.import_module(module_name)
    store: WorkflowStore = getattr(module, class_name).sharing(source)
    return store
