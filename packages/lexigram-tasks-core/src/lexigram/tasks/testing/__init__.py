"""The backend contract suite of lexigram-tasks, for pytest.

A backend, built in or third party, proves it keeps the semantics of
:class:`~lexigram.tasks.protocol.TaskQueueProtocol` by subclassing
:class:`TaskQueueContract` in its tests (see ``docs/contract-suite.md``)::

    class TestAcmeContract(TaskQueueContract):
        async def create_queue(self, queue_name): return AcmeTaskQueue(queue_name=queue_name)
        async def push_raw(self, queue, payload): ...

:class:`WorkerContract`, on the same hooks, proves the worker behaves the
same on the backend (retries, timeouts, shutdown, worker processes ...).
:class:`ResultStoreContract` proves a result store (``create_store`` hook).

Needs the ``testing`` extra: ``pip install "lexigram-tasks-core[testing]"``.
"""

from __future__ import annotations

from lexigram.tasks.testing._attempts import AttemptsContract
from lexigram.tasks.testing._base import ContractBase, requires
from lexigram.tasks.testing._cancel import CancelContract
from lexigram.tasks.testing._capabilities import (
    CapabilityContract,
    DelayContract,
    PriorityContract,
    UniqueContract,
)
from lexigram.tasks.testing._concurrency import ConcurrencyContract
from lexigram.tasks.testing._control import InspectContract
from lexigram.tasks.testing._enqueue import EnqueueContract
from lexigram.tasks.testing._helpers import collect, eventually, make_job
from lexigram.tasks.testing._isolation import run_without
from lexigram.tasks.testing._lease import LeaseContract
from lexigram.tasks.testing._lifecycle import LifecycleContract
from lexigram.tasks.testing._malformed import MalformedContract
from lexigram.tasks.testing._processes import (
    BackendSpec,
    EventLog,
    WorkerAppConfig,
    WorkerProcesses,
)
from lexigram.tasks.testing._results import ResultStoreContract
from lexigram.tasks.testing._settle import SettleContract
from lexigram.tasks.testing._worker import WorkerBehaviourContract
from lexigram.tasks.testing._worker_control import WorkerControlContract
from lexigram.tasks.testing._worker_processes import WorkerProcessContract
from lexigram.tasks.testing._workers_registry import WorkersContract
from lexigram.tasks.testing.contract import JobControlContract, TaskQueueContract, WorkerContract

__all__ = [
    "AttemptsContract",
    "BackendSpec",
    "CancelContract",
    "CapabilityContract",
    "ConcurrencyContract",
    "ContractBase",
    "DelayContract",
    "EnqueueContract",
    "EventLog",
    "InspectContract",
    "JobControlContract",
    "LeaseContract",
    "LifecycleContract",
    "MalformedContract",
    "PriorityContract",
    "ResultStoreContract",
    "SettleContract",
    "TaskQueueContract",
    "UniqueContract",
    "WorkerAppConfig",
    "WorkerBehaviourContract",
    "WorkerContract",
    "WorkerControlContract",
    "WorkerProcessContract",
    "WorkerProcesses",
    "WorkersContract",
    "collect",
    "eventually",
    "make_job",
    "requires",
    "run_without",
]
