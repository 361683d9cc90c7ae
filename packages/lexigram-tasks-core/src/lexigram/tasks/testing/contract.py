"""TaskQueueContract: every area of the backend contract in one base class."""

from __future__ import annotations

from lexigram.tasks.testing._capabilities import (
    CapabilityContract,
    DelayContract,
    PriorityContract,
    UniqueContract,
)
from lexigram.tasks.testing._concurrency import ConcurrencyContract
from lexigram.tasks.testing._enqueue import EnqueueContract
from lexigram.tasks.testing._lease import LeaseContract
from lexigram.tasks.testing._lifecycle import LifecycleContract
from lexigram.tasks.testing._malformed import MalformedContract
from lexigram.tasks.testing._settle import SettleContract


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
):
    """The backend contract suite. Subclass it as ``Test...`` in a test module.

    Override :meth:`create_queue` (return a new, unconnected queue for a
    name) and :meth:`push_raw` (write raw bytes as a foreign producer would).
    Optionally set ``expected_capabilities`` to pin the declared set,
    ``lease_seconds`` for the lease and delay tests, and override
    :meth:`drop_queue` to clean up server state after each test.

    Tests of a capability the backend does not declare are skipped with a
    reason; instead one test checks that such a job is refused with
    :class:`~lexigram.tasks.errors.CapabilityNotSupportedError`.
    """
