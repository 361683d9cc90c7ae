"""WorkflowContract: the workflow behaviour every backend (with its store) must show.

Subclass it next to a backend's contract hooks, which provide
``create_queue``; the tests run a :class:`~lexigram.tasks.TaskProvider`
with in-process workers on that queue::

    class TestRedisWorkflows(RedisHooks, WorkflowContract):
        pass

A backend whose workflow state needs explicit pairing overrides
:meth:`WorkflowContract.pair` (``use_workflow_store(queue, store)``).
Needs the ``testing`` extra (pytest, pytest-asyncio).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from lexigram.tasks.control import JobState
from lexigram.tasks.errors import TaskArgumentsError
from lexigram.tasks.protocol import Capability, TaskQueueProtocol
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.task import Task
from lexigram.tasks.testing._base import ContractBase
from lexigram.tasks.testing._helpers import collect, eventually
from lexigram.tasks.worker import JobFailure
from lexigram.tasks.workflows import (
    StepOutcome,
    WorkflowCancelledError,
    WorkflowFailedError,
    chain,
    chord,
    group,
)
from lexigram.tasks.workflows._resolve import connected_store

__all__ = ["WorkflowContract"]

#: Seconds a contract workflow may take (a few steps on a loaded CI machine).
WAIT = 20.0


class _Sink:
    """A dead-letter sink that keeps what it gets."""

    def __init__(self) -> None:
        self.failures: list[JobFailure] = []

    async def add(self, failure: JobFailure) -> None:
        self.failures.append(failure)


class Flows:
    """The provider of one test, its tasks and what they recorded."""

    def __init__(self, provider: TaskProvider, sink: _Sink) -> None:
        self.provider = provider
        self.sink = sink
        self.calls: Counter[str] = Counter()
        self.seen: dict[str, list[Any]] = {}
        #: Every call, in the order the steps ran: (task, arguments).
        self.order: list[tuple[str, Any]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.add: Task[[int, int], int] = self._register_add()
        self.total: Task[[list[int]], int] = self._register_total()
        self.explode: Task[[int], int] = self._register_explode()
        self.report: Task[[dict[str, Any]], None] = self._register_report()
        self.block: Task[[int], int] = self._register_block()

    def _note(self, name: str, value: Any) -> None:
        self.calls[name] += 1
        self.seen.setdefault(name, []).append(value)
        self.order.append((name, value))

    def _register_add(self) -> Task[[int, int], int]:
        @self.provider.task(name="contract.add")
        async def add(x: int, y: int) -> int:
            self._note("add", (x, y))
            return x + y

        return add

    def _register_total(self) -> Task[[list[int]], int]:
        @self.provider.task(name="contract.total")
        async def total(values: list[int]) -> int:
            self._note("total", values)
            return sum(values)

        return total

    def _register_explode(self) -> Task[[int], int]:
        @self.provider.task(name="contract.explode", max_retries=1)
        async def explode(x: int) -> int:
            self._note("explode", x)
            raise ValueError(f"cannot take {x}")

        return explode

    def _register_report(self) -> Task[[dict[str, Any]], None]:
        @self.provider.task(name="contract.report")
        async def report(failure: dict[str, Any]) -> None:
            self._note("report", failure)

        return report

    def _register_block(self) -> Task[[int], int]:
        @self.provider.task(name="contract.block")
        async def block(x: int) -> int:
            self._note("block", x)
            self.started.set()
            await self.release.wait()
            return x

        return block


class WorkflowContract(ContractBase):
    """Chains, groups, chords, nesting, failure, cancellation and status on one backend."""

    worker_count = 8

    def pair(self, queue: TaskQueueProtocol) -> None:
        """Pair ``queue`` with a workflow store if it has none of its own choosing."""

    @pytest_asyncio.fixture
    async def flows(self, queue_name: str) -> AsyncIterator[Flows]:
        queue = await self.create_queue(queue_name)
        self.pair(queue)
        sink = _Sink()
        provider = TaskProvider(
            queue=queue,
            worker_count=self.worker_count,
            dead_letter=sink,
            poll_interval=0.05,
            shutdown_timeout=2.0,
        )
        flows = Flows(provider, sink)
        async with provider:
            try:
                yield flows
            finally:
                flows.release.set()

    @pytest.mark.asyncio
    async def test_a_chain_passes_each_result_to_the_next_step(self, flows: Flows) -> None:
        add = flows.add
        handle = await chain(add.s(1, 2), add.s(10), add.s(100)).enqueue()
        assert await handle.result(timeout=WAIT) == 113
        assert flows.seen["add"] == [(1, 2), (3, 10), (13, 100)]

    @pytest.mark.asyncio
    async def test_a_group_gives_its_results_in_order(self, flows: Flows) -> None:
        handle = await group(flows.add.s(i, i) for i in range(12)).enqueue()
        assert await handle.result(timeout=WAIT) == [2 * i for i in range(12)]

    @pytest.mark.asyncio
    async def test_a_chord_runs_its_callback_once_with_every_result(self, flows: Flows) -> None:
        header = group(flows.add.s(i, 1) for i in range(30))
        handle = await chord(header, flows.total.s()).enqueue()
        assert await handle.result(timeout=WAIT) == sum(range(1, 31))
        assert flows.calls["total"] == 1
        assert flows.seen["total"] == [list(range(1, 31))]

    @pytest.mark.asyncio
    async def test_shapes_nest(self, flows: Flows) -> None:
        add, total = flows.add, flows.total
        handle = await chain(
            add.s(0, 1),
            group(add.s(10), chain(add.s(20), add.s(300))),
            total.s(),
            group(add.s(1000), chord([add.s(1), add.s(2)], total.s())),
        ).enqueue()
        # 1 -> [11, 321] -> 332 -> [1332, 333 + 334]
        assert await handle.result(timeout=WAIT) == [1332, 667]

    @pytest.mark.asyncio
    async def test_every_nesting_waits_for_what_comes_before_it(self, flows: Flows) -> None:
        add, total = flows.add, flows.total
        shapes = {
            # group in chain: the group waits for the first step, the last for the group
            "group in chain": (chain(add.s(0, 1), group(add.s(10), add.s(20)), total.s()), 32),
            # immutable members and callback still wait for the steps before them
            "immutable": (
                chain(add.s(0, 2), group(add.si(0, 3), add.si(0, 4)), add.si(0, 5)),
                5,
            ),
            "chain in group": (group(chain(add.s(0, 7), add.s(1)), add.s(0, 8)), [8, 8]),
            "chord in chain": (
                chain(add.s(0, 9), chord(group(add.s(1), add.s(2)), total.s()), add.s(100)),
                121,
            ),
            "chain of chords": (
                chain(
                    chord(group(add.s(0, 11), add.s(0, 12)), total.s()),
                    chord(group(add.s(1), add.s(2)), total.s()),
                ),
                49,
            ),
            "group in group": (chain(add.s(0, 13), group(group(add.s(1)), add.s(2))), [[14], 15]),
        }
        handles = {name: await shape.enqueue() for name, (shape, _) in shapes.items()}
        for name, (_, expected) in shapes.items():
            assert await handles[name].result(timeout=WAIT) == expected, name

        def ran(*call: Any) -> int:
            return flows.order.index(("add", call) if len(call) == 2 else ("total", call[0]))

        # Each step ran after every step it waits for, whatever it did with their results.
        assert ran(0, 1) < min(ran(1, 10), ran(1, 20))
        assert max(ran(1, 10), ran(1, 20)) < ran([11, 21])
        assert ran(0, 2) < min(ran(0, 3), ran(0, 4))
        assert max(ran(0, 3), ran(0, 4)) < ran(0, 5)
        assert ran(0, 9) < ran(9, 1) < ran([10, 11]) < ran(21, 100)
        assert max(ran(0, 11), ran(0, 12)) < ran([11, 12]) < ran(23, 1) < ran([24, 25])
        assert ran(0, 13) < min(ran(13, 1), ran(13, 2))

    @pytest.mark.asyncio
    async def test_a_step_after_an_empty_group_waits_for_the_step_before_it(
        self, flows: Flows
    ) -> None:
        handle = await chain(flows.block.s(6), group(), flows.total.s()).enqueue()
        await asyncio.wait_for(flows.started.wait(), WAIT)
        status = await handle.status()
        assert [s.state for s in status.steps] == [JobState.RUNNING, None]
        flows.release.set()
        assert await handle.result(timeout=WAIT) == 0
        assert flows.order == [("block", 6), ("total", [])]

    @pytest.mark.asyncio
    async def test_steps_their_dead_worker_recorded_do_not_run_again(self, queue_name: str) -> None:
        if not self.shared_between_processes:
            pytest.skip("one queue instance per process: no second worker to die")
        queue = await self.create_queue(queue_name)
        self.pair(queue)
        provider = TaskProvider(
            queue=queue, worker_count=2, poll_interval=0.05, shutdown_timeout=2.0
        )
        runs: Counter[str] = Counter()

        @provider.task(name="contract.twice")
        async def twice(x: int) -> int:
            runs[f"twice({x})"] += 1
            return 2 * x

        @provider.task(name="contract.sum")
        async def total(values: list[int]) -> int:
            runs[f"sum({values})"] += 1
            return sum(values)

        await provider.connect()
        try:
            handle = await chord(group(twice.s(1), twice.s(2)), total.s()).enqueue()
            # Another worker takes both steps, runs them and records their results
            # (which claims the callback), then dies before sending it and acking.
            async with self.connected(queue_name) as dead:
                taken = await collect(dead, 2, lease_seconds=self.lease_seconds)
                assert sorted(d.job.id for d in taken if d.job) == handle.job_ids[:2]
                done = [StepOutcome(handle.id, i, str(2 * (i + 1)), (2,)) for i in (0, 1)]
                claims = await (await connected_store(queue)).complete(done)
                assert [(c.step, c.fresh) for c in claims] == [(2, True)]
            await provider.start()
            assert await handle.result(timeout=WAIT + self.lease_seconds) == 6
            # The steps were delivered again and acked unrun; the callback was sent once.
            assert runs == Counter({"sum([2, 4])": 1})
        finally:
            await provider.stop()
            await provider.disconnect()

    @pytest.mark.asyncio
    async def test_an_immutable_step_ignores_the_previous_result(self, flows: Flows) -> None:
        add = flows.add
        handle = await chain(add.s(1, 2), add.si(40, 2), add.s(1)).enqueue()
        assert await handle.result(timeout=WAIT) == 43
        assert flows.seen["add"] == [(1, 2), (40, 2), (42, 1)]

    @pytest.mark.asyncio
    async def test_a_step_failing_for_good_fails_the_workflow_and_runs_on_error_once(
        self, flows: Flows
    ) -> None:
        add = flows.add
        shape = chain(add.s(1, 1), flows.explode.s(), add.s(5)).on_error(flows.report.s())
        handle = await shape.enqueue()
        with pytest.raises(WorkflowFailedError) as failed:
            await handle.result(timeout=WAIT)
        assert (failed.value.step, failed.value.error_type) == (1, "ValueError")
        assert failed.value.error_message == "cannot take 2"
        await eventually(lambda: flows.calls["report"] == 1, WAIT, message="on_error ran")
        assert flows.seen["report"][0]["job_id"] == handle.job_ids[1]
        assert flows.calls["explode"] == 2  # its retry ran too
        assert flows.seen["add"] == [(1, 1)]  # the step after it never ran
        # The dead letter is recorded after the workflow is failed, maybe after on_error ran.
        await eventually(
            lambda: [f.job.id for f in flows.sink.failures if f.job] == [handle.job_ids[1]],
            WAIT,
            message="the failed step dead-lettered",
        )
        status = await handle.status()
        assert status.state == "failed"
        assert status.steps[2].state is None

    @pytest.mark.asyncio
    async def test_cancelling_stops_running_and_queued_steps(self, flows: Flows) -> None:
        if Capability.CANCEL not in flows.provider.queue.capabilities:
            pytest.skip("the backend cannot cancel jobs (Capability.CANCEL)")
        add = flows.add
        handle = await chain(
            group(flows.block.s(1), flows.block.s(2)), flows.total.s(), add.s(1)
        ).enqueue()
        await asyncio.wait_for(flows.started.wait(), WAIT)
        outcomes = await handle.cancel()
        assert len(outcomes) == 2
        with pytest.raises(WorkflowCancelledError):
            await handle.result(timeout=WAIT)

        async def steps_ended() -> bool:
            status = await handle.status()
            return all(s.state in (JobState.CANCELLED, None) for s in status.steps)

        await eventually(steps_ended, WAIT, message="both blocked steps cancelled")
        assert flows.calls["total"] == 0
        assert flows.calls["add"] == 0

    @pytest.mark.asyncio
    async def test_status_reports_each_step(self, flows: Flows) -> None:
        handle = await chain(flows.block.s(7), flows.add.s(1)).enqueue()
        await asyncio.wait_for(flows.started.wait(), WAIT)
        status = await handle.status()
        assert status.state == "running"
        assert [s.state for s in status.steps] == [JobState.RUNNING, None]
        assert [s.job_id for s in status.steps] == handle.job_ids
        flows.release.set()
        assert await handle.result(timeout=WAIT) == 8
        status = await handle.status()
        assert status.state == "succeeded"
        assert [s.state for s in status.steps] == [JobState.SUCCEEDED] * 2

    @pytest.mark.asyncio
    async def test_wrong_arguments_are_refused_at_enqueue(self, flows: Flows) -> None:
        with pytest.raises(TaskArgumentsError, match="previous step's result"):
            await chain(flows.add.s(1, 2), flows.add.s(1, 2)).enqueue()
        with pytest.raises(TypeError, match="did you call the task"):
            chain(flows.add.s(1, 2), 3)  # type: ignore[arg-type]
