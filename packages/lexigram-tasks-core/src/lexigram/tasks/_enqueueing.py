"""The enqueue path of :class:`~lexigram.tasks.TaskProvider`: building jobs and routing them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from lexigram.tasks._lifecycle import Lifecycle
from lexigram.tasks.concurrency import SLOTS_HEADER
from lexigram.tasks.errors import UnknownTaskError
from lexigram.tasks.handle import JobControl, JobHandle
from lexigram.tasks.job import Job, new_job_id
from lexigram.tasks.protocol import TaskQueueProtocol
from lexigram.tasks.task import NO_OPTIONS, EnqueueOptions, Task
from lexigram.tasks.worker._limits import slots_header


class Enqueueing(Lifecycle):
    """Builds jobs and sends them to their backend (a base of ``TaskProvider``)."""

    primary: str
    strict: bool

    def build_job(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        options: EnqueueOptions,
    ) -> Job:
        """The job ``enqueue(name, *args, **kwargs)`` would send, without sending it.

        Raises :class:`TaskArgumentsError` when the task is registered here and
        its handler cannot take these arguments.
        """
        task = self.tasks.get(name)
        queue = self.backends[self._backend_of(task, options.backend)]
        return self._build(name, task, args, kwargs, options, queue)

    def _build(
        self,
        name: str,
        task: Task[Any, Any] | None,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        options: EnqueueOptions,
        queue: TaskQueueProtocol,
    ) -> Job:
        """The job of ``name`` (registered here as ``task``, or None) for ``queue``."""
        if task is not None:
            task.check_arguments(args, kwargs)
        elif self.strict and self.tasks:
            raise UnknownTaskError(
                f"no task named {name!r} is registered with this provider "
                f"(registered: {', '.join(sorted(self.tasks))}); "
                "pass strict=False to TaskProvider to enqueue tasks other processes define"
            )
        priority = options.priority
        if priority is None:
            priority = task.priority if task is not None else 0
        headers = dict(options.headers) if options.headers else {}
        slot_taking = getattr(queue, "lease_takes_slots", False)
        if slot_taking and task is not None and task.limits.concurrent:
            hint = slots_header(task, args, kwargs)
            if hint is not None:
                headers[SLOTS_HEADER] = hint
        # Positional, in the order of Job's fields (keywords cost a third more).
        return Job(
            name,  # task
            list(args),
            dict(kwargs),
            queue.queue_name,
            new_job_id(),  # id
            0,  # attempt
            task.max_retries if task is not None else 0,
            time.time(),  # enqueued_at
            options.run_at(),
            priority,
            task.timeout if task is not None else None,
            options.dedup_key,
            headers,
            {},  # extra
            0,  # failures
        )

    async def enqueue(self, name: str, /, *args: Any, **kwargs: Any) -> JobHandle[Any]:
        """Enqueue the task registered as ``name`` with these arguments."""
        return await self._enqueue_call(name, args, kwargs, NO_OPTIONS)

    async def _enqueue_call(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        options: EnqueueOptions,
    ) -> JobHandle[Any]:
        """``enqueue_job(build_job(...))`` with the task looked up and the job routed
        once (the enqueue of ``provider.enqueue``, ``Task.enqueue`` and ``BoundTask.enqueue``)."""
        task = self.tasks.get(name)
        queue = self.backends[self._backend_of(task, options.backend)]
        job = self._build(name, task, args, kwargs, options, queue)
        if not self._connected:
            await self.connect()
        return await self._send(job, queue)

    async def enqueue_job(self, job: Job, *, backend: str | None = None) -> JobHandle[Any]:
        """Send a prepared job (see :meth:`Task.job`) to its backend."""
        if not self._connected:
            await self.connect()
        return await self._send(job, self._route(job.task, backend))

    async def _send(self, job: Job, queue: TaskQueueProtocol) -> JobHandle[Any]:
        telemetry = self.telemetry
        if telemetry.quiet():  # no SDK: telemetry.send would do only this
            telemetry.pass_on(job)
            job_id = await queue.enqueue(job)
        else:
            with telemetry.send(job, queue.system):
                job_id = await queue.enqueue(job)
        return JobHandle(job_id, job.task, job.queue, self.result_store, self._job_control())

    def send_job_with(
        self,
        job: Job,
        store: Callable[[TaskQueueProtocol, Job], str],
        *,
        backend: str | None = None,
    ) -> JobHandle[Any]:
        """Send ``job`` through ``store(queue, job)``, a blocking write the caller supplies.

        For code without an event loop, such as a transactional enqueue on a
        blocking database connection: the routing, PRODUCER span and trace
        context of :meth:`enqueue_job`, with ``store`` in place of the await.
        ``store`` returns the stored job's id. The provider is not connected.
        """
        queue = self._route(job.task, backend)
        with self.telemetry.send(job, queue.system):
            job_id = store(queue, job)
        return JobHandle(job_id, job.task, job.queue, self.result_store, self._job_control())

    async def enqueue_many(
        self, jobs: Iterable[Job], *, backend: str | None = None
    ) -> list[JobHandle[Any]]:
        """Send many jobs in as few round trips as each backend allows."""
        if not self._connected:
            await self.connect()
        groups: dict[str, list[Job]] = {}
        for job in jobs:
            groups.setdefault(self._route_name(job.task, backend), []).append(job)
        handles: list[JobHandle[Any]] = []
        for name, group in groups.items():
            queue = self.backends[name]
            with self.telemetry.send_many(group, queue.system, queue.queue_name):
                ids = await queue.enqueue_many(group)
            control = self._job_control()
            handles.extend(
                JobHandle(i, j.task, j.queue, self.result_store, control)
                for i, j in zip(ids, group, strict=True)
            )
        return handles

    def _job_control(self) -> JobControl | None:
        """What handles ask for status and cancellation (``TaskProvider``: itself)."""
        return None

    def backend_name(self, task_name: str) -> str:
        """The name of the backend a task's jobs go to: its ``backend=``, else the primary."""
        return self._route_name(task_name, None)

    def _route_name(self, task_name: str, backend: str | None) -> str:
        return self._backend_of(self.tasks.get(task_name), backend)

    def _backend_of(self, task: Task[Any, Any] | None, backend: str | None) -> str:
        """``backend`` if given, else the task's ``backend=``, else the primary; checked."""
        if backend is None:
            backend = task.backend if task is not None and task.backend else self.primary
        if backend not in self.backends:
            raise ValueError(
                f"backend {backend!r} is not configured (backends: {', '.join(self.backends)})"
            )
        return backend

    def _route(self, task_name: str, backend: str | None) -> TaskQueueProtocol:
        return self.backends[self._route_name(task_name, backend)]
