"""The worker's side of workflows: after a step settles, record it and start what it unblocks.

The worker pool calls :meth:`WorkflowRuntime.advance` with the finished
steps of each ack batch *before* acking them, so a worker killed at any
point leaves the step unacked: it runs again, records its result again
(ignored: recording is idempotent per step) and finds the steps it had
claimed but not marked enqueued, which it enqueues then. A step's job id is
derived from the workflow and step, and carries a dedup key where the
backend honours one; before re-enqueueing a recovered claim, the runtime
asks the backend whether that job exists (``get_job``) and the store
whether the step is done, so a step is never enqueued twice.

The pool hands each step's result to :meth:`WorkflowRuntime.returned` when
its task returns (before the job is queued for its ack), together with the
step's span, to which the steps waiting for it link; jobs that are not
workflow steps never reach this module. A step delivered again (a later
attempt) is first looked up (:meth:`WorkflowRuntime.recorded`): when its
result is recorded already, its worker died between recording and ack, and
the step is acked without running again, so a step (a chord's callback
included) that finished runs once; one killed while running runs again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context, propagate, trace

from lexigram.tasks.control import JobState
from lexigram.tasks.events import EventBus, TaskStartedEvent
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Capability, Delivery
from lexigram.tasks.workflows._plan import (
    FINAL_HEADER,
    LINKS_HEADER,
    STEP_HEADER,
    Plan,
    build_step_job,
    parse_step_header,
    resolve,
    step_job_id,
)
from lexigram.tasks.workflows._resolve import connected_store
from lexigram.tasks.workflows.store import RUNNING, Claim, StepOutcome, WorkflowStore

if TYPE_CHECKING:
    from lexigram.tasks.worker._settling import Settling

logger = logging.getLogger("lexigram.tasks.workflows")

#: Plans kept per worker (a plan never changes once stored).
_PLAN_CACHE = 512

#: Results of finished steps, by ``id(job)``, until their ack batch advances them.
#: One table per process: pools of one provider share its event bus and worker id.
_finished: dict[int, tuple[Job, Any, str]] = {}
_listening: weakref.WeakKeyDictionary[EventBus, set[type[Any]]] = weakref.WeakKeyDictionary()


def _on_started(event: TaskStartedEvent) -> None:
    links = event.job.headers.get(LINKS_HEADER)
    if not links:
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    for parent in links.split(","):
        context = trace.get_current_span(propagate.extract({"traceparent": parent}))
        span_context = context.get_span_context()
        if span_context.is_valid:
            span.add_link(span_context, {"lexigram.workflow.waited_for": True})


def _current_traceparent() -> str:
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return ""
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}"
        f"-{int(span_context.trace_flags):02x}"
    )


class WorkflowRuntime:
    """Advances the workflows whose steps one worker pool runs."""

    def __init__(self, pool: Settling) -> None:
        self._pool = pool
        self._plans: OrderedDict[str, Plan] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Plan | None]] = {}
        self._store: WorkflowStore | None = None
        #: Deliveries acked as soon as :meth:`record_now` recorded them: the ack
        #: loop drops them from its batch.
        self.acked_early: set[int] = set()
        bus = pool.events
        heard = _listening.setdefault(bus, set())
        # Links are only worth a start event per job when spans are recorded.
        if TaskStartedEvent not in heard and pool.telemetry.tracing:
            heard.add(TaskStartedEvent)
            bus.subscribe(TaskStartedEvent, _on_started)

    async def store(self) -> WorkflowStore:
        if self._store is None:
            self._store = await connected_store(self._pool.queue)
        return self._store

    # -- steps that returned ---------------------------------------------------

    def returned(self, delivery: Delivery, result: Any) -> Awaitable[bool] | None:
        """A step's task returned ``result``: kept for its ack batch to record; a
        final step is recorded at once (await what this returns: True when
        recorded, and then the caller acks it at once too, see :meth:`record_now`)."""
        job = delivery.job
        assert job is not None
        _finished[id(job)] = (job, result, _current_traceparent())
        if FINAL_HEADER not in job.headers:
            return None
        return self.record_now(delivery)

    async def record_now(self, delivery: Delivery) -> bool:
        """Record a final step (a chord's callback, a chain's last step, the error handler).

        Waiting for its ack batch would leave a window in which a killed
        worker leaves the step unrecorded, so that it runs again. Other steps
        stay batched, which is what makes a wide fan-out cheap (one store call
        per ack batch). On an error, returns False and the ack loop takes over.
        """
        job = delivery.job
        assert job is not None
        entry = _finished.get(id(job))
        try:
            await self.advance([delivery])
        except Exception as exc:
            if entry is not None:
                _finished[id(job)] = entry  # the ack loop records it
            logger.warning("recording workflow step %s failed (%s); retried", job.id, exc)
            return False
        return True

    async def recorded(self, delivery: Delivery) -> bool:
        """Whether a delivered step already finished: its result is in the store.

        That is a step whose worker died after recording its result and
        before its ack. It must not run again: this redoes, idempotently,
        what recording it started (enqueue the steps it claimed, which a
        recovered claim does only if they are not in the queue yet), and the
        caller acks the delivery without running it.
        """
        job = delivery.job
        assert job is not None
        where = parse_step_header(job.headers.get(STEP_HEADER, ""))
        if where is None:
            return False
        workflow_id, index = where
        store = await self.store()
        found = (await store.inputs(workflow_id, [index])).get(index)
        if found is None:
            return False
        plan = await self._plan(workflow_id)
        if plan is not None and index < len(plan.steps):
            dependents = tuple(plan.steps[index].dependents)
            outcome = StepOutcome(workflow_id, index, found[0], dependents, found[1])
            await self._enqueue_claims(await store.complete([outcome]))
        logger.warning(
            "workflow step %s (%s) finished before its worker stopped; not run again",
            job.id,
            job.task,
        )
        return True

    @property
    def results_waiting(self) -> bool:
        """Whether any step's result waits for its ack batch (else a batch holds no step)."""
        return bool(_finished)

    def not_acked_yet(self, batch: list[Delivery]) -> list[Delivery]:
        """``batch`` without the deliveries acked early (forgetting them)."""
        early = self.acked_early
        kept = [d for d in batch if id(d) not in early]
        for delivery in batch:
            early.discard(id(delivery))
        return kept

    async def advance(self, deliveries: Sequence[Delivery]) -> None:
        """Record the results of finished steps and enqueue the steps they make ready.

        Raises when the store or the backend fails: the caller then hands
        these deliveries back, to run again (and record their results then).
        """
        outcomes: list[StepOutcome] = []
        for delivery in deliveries:
            job = delivery.job
            assert job is not None
            entry = _finished.pop(id(job), None)
            if entry is None or entry[0] is not job:
                continue  # advanced already (an ack retried)
            _, result, span = entry
            where = parse_step_header(job.headers[STEP_HEADER])
            if where is not None and FINAL_HEADER in job.headers:
                # Nothing waits for a final step: recording it needs no plan, which
                # a worker that ran no other step of the workflow would have to load.
                text = _json_or_none(result)
                if text is not None:
                    outcomes.append(StepOutcome(where[0], where[1], text, (), span))
                    continue
            plan = await self._plan(where[0]) if where is not None else None
            if where is None or plan is None:
                logger.warning("job %s names an unknown workflow step; nothing follows it", job.id)
                continue
            workflow_id, index = where
            if index > len(plan.steps) or (plan.handler is None and index == len(plan.steps)):
                continue
            try:
                text = json.dumps(result, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError) as exc:
                if index < len(plan.steps):
                    await self.step_failed(
                        job, "JobSerializationError", f"the step's result is not JSON: {exc}"
                    )
                    continue
                text = "null"  # the error handler: only that it finished is kept
            # The error handler is recorded too, so that a redelivery finds it done.
            dependents = tuple(plan.step(index).dependents)
            outcomes.append(StepOutcome(workflow_id, index, text, dependents, span))
        if outcomes:
            store = await self.store()
            await self._enqueue_claims(await store.complete(outcomes))

    async def _enqueue_claims(self, claims: Sequence[Claim]) -> None:
        by_workflow: dict[str, list[Claim]] = {}
        for claim in claims:
            by_workflow.setdefault(claim.workflow_id, []).append(claim)
        for workflow_id, found in by_workflow.items():
            plan = await self._plan(workflow_id)
            if plan is None:
                continue
            steps = sorted({c.step for c in found})
            fresh = {c.step for c in found if c.fresh}
            needed = sorted({d for s in steps for d in plan.steps[s].deps})
            store = await self.store()
            inputs = await store.inputs(workflow_id, needed) if needed else {}
            results = {i: json.loads(text) for i, (text, _) in inputs.items()}
            jobs: list[Job] = []
            for index in steps:
                if index not in fresh and not await self._absent(workflow_id, index):
                    continue
                step = plan.steps[index]
                given = resolve(step.input, results) if step.receives else None
                links = [inputs[d][1] for d in step.deps if d in inputs and inputs[d][1]]
                jobs.append(build_step_job(plan, workflow_id, index, given, links))
            await self._send(plan, jobs)
            status = await store.mark_enqueued(workflow_id, steps)
            if status != RUNNING:
                # Cancelled or failed while these were being sent: stop them again.
                await self._cancel_jobs([job.id for job in jobs])

    async def _absent(self, workflow_id: str, index: int) -> bool:
        """A recovered claim: True when the step's job is neither in the queue nor done."""
        queue = self._pool.queue
        if Capability.INSPECT in queue.capabilities:
            info = await queue.get_job(step_job_id(workflow_id, index))  # type: ignore[attr-defined]
            if info is not None:
                return False
        store = await self.store()
        return not await store.inputs(workflow_id, [index])

    async def _send(self, plan: Plan, jobs: list[Job]) -> None:
        if not jobs:
            return
        pool = self._pool
        queue = pool.queue
        # The send span belongs to the workflow's trace, as the steps do.
        token = (
            context.attach(propagate.extract({"traceparent": plan.traceparent}))
            if plan.traceparent
            else None
        )
        try:
            with pool.telemetry.send_many(jobs, queue.system, queue.queue_name):
                await queue.enqueue_many(jobs)
        finally:
            if token is not None:
                context.detach(token)

    # -- steps that failed or were cancelled -----------------------------------

    async def step_failed(self, job: Job, error_type: str, message: str) -> None:
        """The step failed for good: fail its workflow and run the error handler once."""
        where = parse_step_header(job.headers.get(STEP_HEADER, ""))
        plan = await self._plan(where[0]) if where is not None else None
        if where is None or plan is None:
            return
        workflow_id, index = where
        if index >= len(plan.steps):
            return  # the error handler itself failed: the dead letter queue has it
        failure = {
            "workflow_id": workflow_id,
            "step": index,
            "task": job.task,
            "job_id": job.id,
            "error_type": error_type,
            "error_message": message,
        }
        store = await self.store()
        claim = await store.fail(workflow_id, index, json.dumps(failure))
        if claim is None or plan.handler is None:
            return
        if not claim.fresh:
            if not await self._absent(workflow_id, claim.step):
                await store.mark_enqueued(workflow_id, [claim.step])
                return
            snapshot = await store.snapshot(workflow_id)
            if snapshot is not None and snapshot.error:
                failure = json.loads(snapshot.error)
        handler = build_step_job(plan, workflow_id, claim.step, failure, [])
        await self._send(plan, [handler])
        await store.mark_enqueued(workflow_id, [claim.step])

    async def step_cancelled(self, job: Job) -> None:
        """A step was cancelled: so is its workflow, with every other step in flight."""
        where = parse_step_header(job.headers.get(STEP_HEADER, ""))
        if where is None:
            return
        store = await self.store()
        steps = await store.cancel(where[0])
        others = [step_job_id(where[0], i) for i in steps]
        await self._cancel_jobs([i for i in others if i != job.id])

    async def _cancel_jobs(self, job_ids: Sequence[str]) -> None:
        queue = self._pool.queue
        if not job_ids or Capability.CANCEL not in queue.capabilities:
            return
        for job_id in job_ids:
            await queue.cancel(job_id)  # type: ignore[attr-defined]

    async def _plan(self, workflow_id: str) -> Plan | None:
        plan = self._plans.get(workflow_id)
        if plan is not None:
            self._plans.move_to_end(workflow_id)
            return plan
        # One load per workflow however many steps ask at once (a wide plan is big).
        loading = self._loading.get(workflow_id)
        if loading is None:
            loading = self._loading[workflow_id] = asyncio.ensure_future(self._load(workflow_id))
            loading.add_done_callback(lambda _: self._loading.pop(workflow_id, None))
        return await asyncio.shield(loading)

    async def _load(self, workflow_id: str) -> Plan | None:
        text = await (await self.store()).plan(workflow_id)
        if text is None:
            return None
        plan = self._plans[workflow_id] = Plan.from_json(text)
        if len(self._plans) > _PLAN_CACHE:
            self._plans.popitem(last=False)
        return plan


def _json_or_none(result: Any) -> str | None:
    try:
        return json.dumps(result, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return None


def is_step(delivery: Delivery) -> bool:
    """Whether ``delivery`` is a workflow step that finished successfully."""
    job = delivery.job
    return job is not None and delivery.outcome is JobState.SUCCEEDED and STEP_HEADER in job.headers
