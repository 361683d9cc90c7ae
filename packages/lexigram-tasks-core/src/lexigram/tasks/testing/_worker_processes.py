"""The worker in real processes on a backend: sharing a queue, SIGKILL, SIGTERM, a job
that kills its worker. The processes run :mod:`lexigram.tasks.testing.worker_app`."""

from __future__ import annotations

import signal
import subprocess
from typing import Any, ClassVar

import pytest

from lexigram.tasks.job import Job
from lexigram.tasks.protocol import QueueCounts, TaskQueueProtocol
from lexigram.tasks.testing._base import ContractBase
from lexigram.tasks.testing._helpers import eventually
from lexigram.tasks.testing._processes import WorkerProcesses, exited
from lexigram.tasks.testing._worker import EMPTY, settled


def app_job(queue: TaskQueueProtocol, task: str, *args: Any, max_retries: int = 0) -> Job:
    """A job for one of the tasks of ``worker_app``."""
    return Job(task=task, args=list(args), queue=queue.queue_name, max_retries=max_retries)


class WorkerProcessContract(ContractBase):
    """Worker processes on one queue. Skipped where ``shared_between_processes`` is False."""

    #: ``True`` when the server hands a dead consumer's jobs back as soon as its
    #: connection drops (RabbitMQ) rather than when their lease lapses.
    returns_jobs_of_a_closed_connection: ClassVar[bool] = False

    @pytest.mark.asyncio
    async def test_two_worker_processes_run_every_job_exactly_once(
        self, queue: TaskQueueProtocol, processes: WorkerProcesses
    ) -> None:
        workers = [processes.start(), processes.start()]
        await processes.ready(2)
        keys = [f"job-{n}" for n in range(200)]
        await queue.enqueue_many([app_job(queue, "slow", key, 0.01) for key in keys])
        await eventually(
            lambda: len(processes.log.count("done")) == len(keys), 60, message="not drained"
        )
        for worker in workers:
            await processes.stop(worker)
        done = processes.log.count("done")
        assert set(done.values()) == {1}, "a job ran more than once"
        assert set(done) == set(keys)
        assert processes.log.pids("done") == {w.pid for w in workers}, "one process did all"
        await settled(queue, EMPTY)

    @pytest.mark.asyncio
    async def test_a_sigkilled_workers_job_comes_back_and_completes_once(
        self, queue: TaskQueueProtocol, processes: WorkerProcesses
    ) -> None:
        lease = self.lease_seconds
        victim = processes.start(lease_seconds=lease)
        # No retries: a run lost with its worker is not the job's failure.
        await queue.enqueue(app_job(queue, "hang_once", "the-job"))
        await eventually(lambda: processes.log.count("start"), 30, message="never started")
        victim.send_signal(signal.SIGKILL)
        await exited(victim, 10)
        if self.returns_jobs_of_a_closed_connection:
            await settled(queue, QueueCounts(ready=1, delayed=0, running=0, failed=0))
        else:
            counts = await queue.counts()
            assert (counts.ready, counts.running) == (0, 1), "the dead worker's lease is held"

        rescuer = processes.start(lease_seconds=lease)
        await eventually(lambda: processes.log.count("done"), lease + 30, message="not back")
        await settled(queue, EMPTY)
        await processes.stop(rescuer)
        assert processes.log.count("start") == {"the-job": 2}
        assert processes.log.count("done") == {"the-job": 1}, "it completed more than once"
        assert processes.log.pids("done") == {rescuer.pid}

    @pytest.mark.asyncio
    async def test_sigterm_acks_every_job_that_finished_in_the_shutdown_window(
        self, queue: TaskQueueProtocol, processes: WorkerProcesses
    ) -> None:
        """8 jobs running at SIGTERM end together inside the window, after the worker
        stopped fetching: each is acked before the process exits."""
        worker = processes.start(worker_count=8)
        keys = [f"job-{n}" for n in range(8)]
        await queue.enqueue_many([app_job(queue, "slow", key, 1.0) for key in keys])
        await eventually(lambda: len(processes.log.count("start")) == 8, 30, message="8 jobs")
        await processes.stop(worker)
        assert sorted(processes.log.count("done")) == keys, "a job was cut inside the window"
        assert await queue.counts() == EMPTY, "finished jobs were not acked"

    @pytest.mark.asyncio
    async def test_sync_jobs_do_not_hold_the_process_past_its_shutdown_window(
        self, queue: TaskQueueProtocol, processes: WorkerProcesses
    ) -> None:
        """SIGTERM with 8 ``def`` jobs running and a 0.5 s window: the process exits
        without waiting for their threads, and each job runs again later exactly once."""
        # Long enough that "exited before the jobs could end" holds on a loaded machine.
        job_seconds = 6.0
        keys = [f"job-{n}" for n in range(8)]
        await queue.enqueue_many([app_job(queue, "slow_sync", k, job_seconds) for k in keys])
        first = processes.start(worker_count=8, shutdown_timeout=0.5)
        await eventually(lambda: len(processes.log.count("start")) == 8, 20, message="8 jobs")
        first.send_signal(signal.SIGTERM)
        code = await exited(first, job_seconds / 2)
        assert code is not None, "the worker waited for its threads past the shutdown window"
        assert code == 0
        assert not processes.log.count("done")
        counts = await queue.counts()
        assert (counts.ready, counts.running) == (8, 0), "the 8 jobs were not returned"

        second = processes.start(worker_count=8, shutdown_timeout=job_seconds * 2)
        await eventually(
            lambda: len(processes.log.count("done")) == 8, job_seconds * 4, message="8 done"
        )
        await processes.stop(second)
        assert processes.log.count("start") == dict.fromkeys(keys, 2)
        assert processes.log.count("done") == dict.fromkeys(keys, 1)
        await settled(queue, EMPTY)

    @pytest.mark.asyncio
    async def test_a_job_that_kills_its_worker_pays_alone(
        self, queue: TaskQueueProtocol, processes: WorkerProcesses
    ) -> None:
        """A job ends its worker process while innocents leased with it run. Restarted
        as a supervisor would, the worker runs the job alone twice more (the default
        ``lost_lease_retries``), then dead-letters it; every innocent runs once."""
        innocents = [f"innocent-{n}" for n in range(12)]
        jobs = [app_job(queue, "slow", key, 0.8) for key in innocents]
        jobs.insert(2, app_job(queue, "killer", "killer"))
        await queue.enqueue_many(jobs)

        async def finished() -> bool:
            done = processes.log.count("done")
            return (await queue.counts()).failed == 1 and all(done[k] for k in innocents)

        deaths = 0
        while not await finished():
            assert deaths <= 3, f"still not settled after {deaths} deaths: {processes.log.lines()}"
            worker = processes.start(worker_count=4, lease_seconds=1.0, shutdown_timeout=5)

            async def died_or_finished(worker: subprocess.Popen[bytes] = worker) -> bool:
                return worker.poll() is not None or await finished()

            await eventually(died_or_finished, 60, message="the worker neither died nor finished")
            if worker.poll() is None:
                await processes.stop(worker)
            else:
                assert worker.returncode == 70, f"the worker exited with {worker.returncode}"
                deaths += 1
        assert deaths == 3
        [letter] = await queue.dead_letters()
        assert letter.reason.startswith("LeaseExpired: gave up after 3 attempt(s)"), letter
        assert processes.log.count("start")["killer"] == 3
        assert processes.log.count("done") == dict.fromkeys(innocents, 1)
        await settled(queue, QueueCounts(ready=0, delayed=0, running=0, failed=1))
