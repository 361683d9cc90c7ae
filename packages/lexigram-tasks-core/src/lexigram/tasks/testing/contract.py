"""TaskQueueContract and WorkerContract: every area of the backend contract in two base classes."""

from __future__ import annotations

from lexigram.tasks.testing._attempts import AttemptsContract
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
from lexigram.tasks.testing._lease import LeaseContract
from lexigram.tasks.testing._lifecycle import LifecycleContract
from lexigram.tasks.testing._malformed import MalformedContract
from lexigram.tasks.testing._settle import SettleContract
from lexigram.tasks.testing._worker import WorkerBehaviourContract
from lexigram.tasks.testing._worker_control import WorkerControlContract
from lexigram.tasks.testing._worker_processes import WorkerProcessContract
from lexigram.tasks.testing._workers_registry import WorkersContract


class JobControlContract(InspectContract, CancelContract, WorkersContract):
    """Job visibility and control: each part runs where its capability is declared.

    ``InspectContract`` (Capability.INSPECT): states through a job's life,
    its details, listing with a cursor, progress. ``CancelContract``
    (Capability.CANCEL): pending jobs never start, running ones are signalled
    and not run again. ``WorkersContract`` (Capability.WORKERS): the registry.
    """


class TaskQueueContract(
    LifecycleContract,
    EnqueueContract,
    SettleContract,
    LeaseContract,
    MalformedContract,
    CapabilityContract,
    DelayContract,
    PriorityContract,
    UniqueContract,
    ConcurrencyContract,
    JobControlContract,
):
    """The backend contract suite. Subclass it as ``Test...`` in a test module.

    Override :meth:`create_queue` (return a new, unconnected queue for a
    name) and :meth:`push_raw` (write raw bytes as a foreign producer would).
    Optionally set ``expected_capabilities`` to pin the declared set,
    ``lease_seconds`` for the lease and delay tests, and override
    :meth:`drop_queue` to clean up server state after each test.

    Tests of a capability the backend does not declare (job control's
    INSPECT, CANCEL and WORKERS included) are skipped with a reason; for
    DELAY, PRIORITY and UNIQUE one test checks instead that a job needing
    it is refused with :class:`~lexigram.tasks.errors.CapabilityNotSupportedError`.
    """


class WorkerContract(
    WorkerBehaviourContract, WorkerProcessContract, WorkerControlContract, AttemptsContract
):
    """The worker suite: what :class:`~lexigram.tasks.WorkerPool` does with this backend's jobs.

    Built on the same hooks as :class:`TaskQueueContract` (:meth:`create_queue`,
    :meth:`push_raw`, :meth:`queue_spec`, :meth:`drop_queue`): retries with
    backoff, timeouts of ``async`` and ``def`` tasks, graceful shutdown, bad
    messages, rate limits, unknown tasks, events and spans in the test process;
    then worker processes (``worker_app``) sharing the queue, killed with
    SIGKILL, stopped with SIGTERM, and killed by their own job; and job
    control through the worker (:class:`WorkerControlContract`, run where
    the backend declares INSPECT, CANCEL or WORKERS), and attempt histories
    (:class:`AttemptsContract`, where it declares ATTEMPTS).

    Differences a backend may legitimately have are declared, not copied:
    ``shared_between_processes = False`` skips the process tests (a queue in
    one process), ``returns_jobs_of_a_closed_connection = True`` expects a
    killed worker's job back at once instead of after its lease.
    """
