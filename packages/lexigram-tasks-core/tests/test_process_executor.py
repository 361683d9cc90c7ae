"""The process executor on the memory backend: results, timeouts that kill, crashes,
recycling by job count and by memory, cancellation, tracing, un-importable functions."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lexigram.tasks import (
    CancelOutcome,
    ConfigurationError,
    JobCancelledError,
    MemoryTaskQueue,
    TaskFailedError,
    TaskProvider,
    WorkerSettings,
)
from lexigram.tasks.testing import eventually

# The children import the task functions by module name: the helper module's folder
# must be on sys.path (children inherit it).
sys.path.insert(0, str(Path(__file__).parent))
import _process_executor_tasks as tasks
import _process_executor_traced as traced_tasks


def provider_for(name: str, **settings: Any) -> TaskProvider:
    return TaskProvider(queue=MemoryTaskQueue(name), **settings)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def pid_in(path: Path) -> int:
    text = await eventually(lambda: path.exists() and path.read_text(), 30)
    return int(text)


# -- results ---------------------------------------------------------------------------


async def test_results_arguments_and_current_job_travel_between_processes() -> None:
    provider = provider_for("proc-roundtrip")
    add = provider.task(name="add", executor="process")(tasks.add)
    async_add = provider.task(name="async_add", executor="process")(tasks.async_add)
    whoami = provider.task(name="whoami", executor="process")(tasks.whoami)
    async with provider:
        result = await (await add.enqueue(2, b=3)).result(timeout=30)
        assert result["sum"] == 5 and result["pid"] != os.getpid()
        assert await (await async_add.enqueue(4, 5)).result(timeout=30) == 9
        handle = await whoami.enqueue()
        me = await handle.result(timeout=30)
    assert (me["id"], me["task"], me["attempt"]) == (handle.id, "whoami", 1)
    assert not alive(result["pid"])  # the pool's stop ended its children


async def test_results_of_every_json_kind_travel_and_async_tasks_see_their_job() -> None:
    provider = provider_for("proc-kinds")
    echo = provider.task(name="echo", executor="process")(tasks.echo)
    async_whoami = provider.task(name="async_whoami", executor="process")(tasks.async_whoami)
    values: list[Any] = [None, 0, 1.5, "", "null", "o0 null", [], [None], {}, {"a": None}, True]
    async with provider:
        for value in values:
            assert await (await echo.enqueue(value)).result(timeout=30) == value
        handle = await async_whoami.enqueue()
        me = await handle.result(timeout=30)
    assert me == {"id": handle.id, "task": "async_whoami", "attempt": 1}


async def test_arguments_and_results_of_any_size_travel_whole() -> None:
    provider = provider_for("proc-sizes")
    reverse = provider.task(name="reverse", executor="process")(tasks.reverse)
    # Around the sizes where a message is written or read in more than one piece.
    sizes = [0, 1, 16_380, 16_400, 65_530, 65_540, 3_000_000]
    async with provider:
        for size in sizes:
            text = "".join(chr(97 + i % 26) for i in range(size))
            assert await (await reverse.enqueue(text)).result(timeout=30) == text[::-1]


async def test_an_exception_keeps_its_type_and_progress_is_refused_clearly() -> None:
    provider = provider_for("proc-errors")
    fail = provider.task(name="fail", executor="process")(tasks.fail)
    progress = provider.task(name="progress", executor="process")(tasks.report_progress)
    async with provider:
        with pytest.raises(TaskFailedError) as failed:
            await (await fail.enqueue("no such thing")).result(timeout=30)
        with pytest.raises(TaskFailedError) as refused:
            await (await progress.enqueue()).result(timeout=30)
    assert (failed.value.error_type, failed.value.error_message) == ("LookupError", "no such thing")
    assert refused.value.error_type == "ProgressNotSupportedError"
    assert "process executor" in refused.value.error_message


async def test_default_executor_process_runs_plain_functions_in_a_child() -> None:
    provider = provider_for("proc-default", default_executor="process")
    pid = provider.task(name="pid")(tasks.pid)
    on_thread = provider.task(name="pid_thread", executor="thread")(tasks.burn)
    async with provider:
        assert await (await pid.enqueue()).result(timeout=30) != os.getpid()
        assert await (await on_thread.enqueue(1)).result(timeout=30) > 0
    with pytest.raises(ValueError, match="default_executor must be one of"):
        WorkerSettings(default_executor="fork")  # type: ignore[arg-type]


# -- timeouts, crashes -------------------------------------------------------------------


async def test_a_timed_out_job_has_its_child_killed_before_its_retry_starts(
    tmp_path: Path,
) -> None:
    provider = provider_for("proc-timeout")
    hang_once = provider.task(
        name="hang_once", executor="process", timeout=1.0, max_retries=1, retry_backoff=0.01
    )(tasks.hang_once)
    hang = provider.task(name="hang", executor="process", timeout=1.0)(tasks.hang)
    async with provider:
        retried = await (await hang_once.enqueue(str(tmp_path / "first"))).result(timeout=60)
        # the retry itself looked: attempt 1's child no longer existed when it started
        assert retried == {"first_alive": False, "attempt": 2}
        handle = await hang.enqueue(str(tmp_path / "only"))
        with pytest.raises(TaskFailedError) as info:
            await handle.result(timeout=60)
        assert not alive(await pid_in(tmp_path / "only"))
    assert info.value.error_type == "TaskTimeoutError"
    assert "timeout of 1s" in info.value.error_message


async def test_a_crashed_child_fails_only_its_job_and_is_replaced() -> None:
    provider = provider_for("proc-crash", worker_count=2, process_pool_size=2)
    exit_now = provider.task(name="exit_now", executor="process")(tasks.exit_now)
    segfault = provider.task(name="segfault", executor="process")(tasks.segfault)
    add = provider.task(name="add", executor="process")(tasks.add)
    async with provider:
        exited, crashed = await exit_now.enqueue(3), await segfault.enqueue()
        fine = await add.enqueue(1, 1)
        with pytest.raises(TaskFailedError) as first:
            await exited.result(timeout=30)
        with pytest.raises(TaskFailedError) as second:
            await crashed.result(timeout=30)
        assert (await fine.result(timeout=30))["sum"] == 2
        after = [await (await add.enqueue(i, 0)).result(timeout=30) for i in range(3)]
    assert first.value.error_type == second.value.error_type == "WorkerProcessCrashed"
    assert "exit code 3" in first.value.error_message
    assert "'exit_now'" in first.value.error_message
    assert "SIGSEGV" in second.value.error_message
    assert [r["sum"] for r in after] == [0, 1, 2]


async def test_a_child_killed_while_idle_is_replaced_without_failing_a_job() -> None:
    provider = provider_for("proc-idle-kill")
    pid = provider.task(name="pid", executor="process")(tasks.pid)
    async with provider:
        first = await (await pid.enqueue()).result(timeout=30)
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: gone(first), 10)
        second = await (await pid.enqueue()).result(timeout=30)
    assert second != first


# -- recycling ---------------------------------------------------------------------------


async def test_max_jobs_per_child_replaces_children() -> None:
    provider = provider_for("proc-recycle", max_jobs_per_child=2)
    pid = provider.task(name="pid", executor="process")(tasks.pid)
    async with provider:
        pids = [await (await pid.enqueue()).result(timeout=30) for _ in range(6)]
    assert len(set(pids)) == 3
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]


async def test_max_memory_per_child_keeps_a_leaking_task_bounded() -> None:
    limit, step = 120, 20  # MB
    provider = provider_for("proc-leak", max_memory_per_child=limit)
    leak = provider.task(name="leak", executor="process")(tasks.leak)
    async with provider:
        runs = [await (await leak.enqueue(step)).result(timeout=30) for _ in range(15)]
    # without the limit one child would reach 300 MB more than it started with
    highest = max(r["rss"] for r in runs) / 2**20
    assert highest <= limit + step, f"RSS reached {highest:.0f} MB"
    assert len({r["pid"] for r in runs}) >= 2


# -- cancellation ------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc")
def test_a_child_reads_its_memory_as_it_is_now_not_its_peak() -> None:
    from lexigram.tasks.worker._process_child import _memory_reader

    rss = _memory_reader()
    before = rss()
    block = bytearray(200 * 2**20)  # touched, so resident
    during = rss()
    del block
    after = rss()
    assert during - before > 150 * 2**20
    assert during - after > 150 * 2**20  # the peak would not come down


async def test_cancelling_a_process_job_kills_its_child(tmp_path: Path) -> None:
    provider = provider_for("proc-cancel")
    hang = provider.task(name="hang", executor="process", max_retries=3)(tasks.hang)
    async with provider:
        handle = await hang.enqueue(str(tmp_path / "pid"))
        child = await pid_in(tmp_path / "pid")
        assert await handle.cancel() is CancelOutcome.REQUESTED
        with pytest.raises(JobCancelledError):
            await handle.result(timeout=30)
        assert not alive(child)
        info = await handle.status()
        assert info is not None and info.attempt == 1  # not retried


async def test_a_job_cancelled_while_waiting_for_a_child_frees_its_slot_for_new_jobs(
    tmp_path: Path,
) -> None:
    # One child, two slots: a hanging job holds the child, a second one waits for it.
    # The worker leases nothing while as many jobs wait for a child as slots are free,
    # so a cancelled waiter must stop counting, or no new job would ever be leased.
    provider = provider_for("proc-cancel-waiter", worker_count=2, process_pool_size=1)
    hang = provider.task(name="hang", executor="process")(tasks.hang)
    pid = provider.task(name="pid", executor="process")(tasks.pid)

    @provider.task(name="inline_echo")
    async def inline_echo(value: int) -> int:
        return value

    async with provider:
        hanging = await hang.enqueue(str(tmp_path / "pid"))
        await pid_in(tmp_path / "pid")
        waiting = await pid.enqueue()
        await eventually(
            lambda: any(
                p._processes is not None and p._processes.waiting for p in provider.pools.values()
            ),
            10,
        )
        assert await waiting.cancel() is CancelOutcome.REQUESTED
        with pytest.raises(JobCancelledError):
            await waiting.result(timeout=30)
        assert await (await inline_echo.enqueue(7)).result(timeout=10) == 7
        assert await hanging.cancel() is CancelOutcome.REQUESTED


async def test_a_job_cancelled_in_line_behind_a_full_child_ends_at_once_and_the_line_goes_on(
    tmp_path: Path,
) -> None:
    # One child, four slots: a held job runs, the next is in the child's pipe, two
    # more wait in line. The first of those is cancelled: it ends cancelled without
    # running, and the one behind it still runs once the child has room.
    provider = provider_for("proc-cancel-in-line", worker_count=4, process_pool_size=1)
    hold = provider.task(name="hold", executor="process", timeout=60)(tasks.hold)
    log_run = provider.task(name="log_run", executor="process")(tasks.log_run)
    log, release = tmp_path / "log", tmp_path / "release"

    def waiting() -> int:
        return sum(p._processes.waiting for p in provider.pools.values() if p._processes)

    async with provider:
        held = await hold.enqueue(str(tmp_path / "pid"), str(release))
        await pid_in(tmp_path / "pid")
        handles = [await log_run.enqueue(str(log), name, 0) for name in ("ahead", "x", "last")]
        await eventually(lambda: waiting() == 3, 10)  # one in the pipe, two in line
        assert await handles[1].cancel() is CancelOutcome.REQUESTED
        with pytest.raises(JobCancelledError):
            await handles[1].result(timeout=30)
        assert waiting() == 2
        release.touch()
        await held.result(timeout=30)
        await handles[0].result(timeout=30)
        await handles[2].result(timeout=30)
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["ahead", "last"]


async def test_jobs_in_line_for_a_busy_child_run_in_order_each_timed_from_its_own_start(
    tmp_path: Path,
) -> None:
    # One child: a held job keeps it busy while five more line up (ten slots, as the
    # worker leases no more once as many jobs wait for a child as slots are free).
    # Each takes 0.4 s under a timeout of 1 s: the last one reaches the child well
    # past 1 s after it arrived, so its clock must start when the child gets it.
    provider = provider_for("proc-line", worker_count=10, process_pool_size=1)
    hold = provider.task(name="hold", executor="process", timeout=60)(tasks.hold)
    log_run = provider.task(name="log_run", executor="process", timeout=1.0)(tasks.log_run)
    hang = provider.task(name="hang", executor="process", timeout=1.0)(tasks.hang)
    log, release = tmp_path / "log", tmp_path / "release"

    def in_line() -> int:
        return sum(p._processes.waiting for p in provider.pools.values() if p._processes)

    async with provider:
        held = await hold.enqueue(str(tmp_path / "held"), str(release))
        first_child = await pid_in(tmp_path / "held")
        handles = {}
        # Enqueued one at a time, each once the one before is in line: the order of arrival.
        for name, task, args in [
            ("a", log_run, (str(log), "a", 0.4)),
            ("cancelled", log_run, (str(log), "cancelled", 0.4)),
            ("b", log_run, (str(log), "b", 0.4)),
            ("timed_out", hang, (str(tmp_path / "hung"),)),
            ("c", log_run, (str(log), "c", 0.4)),
        ]:
            handles[name] = await task.enqueue(*args)
            arrived = len(handles)
            await eventually(lambda arrived=arrived: in_line() == arrived, 10)
        assert await handles["cancelled"].cancel() is CancelOutcome.REQUESTED
        with pytest.raises(JobCancelledError):
            await handles["cancelled"].result(timeout=30)
        assert in_line() == 4
        release.touch()
        assert await held.result(timeout=30) == first_child
        a, b = await handles["a"].result(timeout=30), await handles["b"].result(timeout=30)
        with pytest.raises(TaskFailedError) as timed_out:
            await handles["timed_out"].result(timeout=30)
        c = await handles["c"].result(timeout=30)
    assert timed_out.value.error_type == "TaskTimeoutError"
    # The child that timed out was killed; the job after it got a new child.
    assert a == b == first_child != c
    assert not alive(await pid_in(tmp_path / "hung"))
    assert log.read_text().split() == ["a", str(a), "b", str(b), "c", str(c)]


# -- tracing -----------------------------------------------------------------------------


async def test_the_trace_continues_in_the_child(
    tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    provider = TaskProvider(queue=MemoryTaskQueue("proc-trace"), tracer_provider=tracer_provider)
    span_parent = provider.task(name="span_parent", executor="process")(tasks.span_parent)
    async with provider:
        seen = await (await span_parent.enqueue()).result(timeout=30)
    [process] = [s for s in exporter.get_finished_spans() if s.kind.name == "CONSUMER"]
    assert process.context is not None
    # the child has the OpenTelemetry API only: its span carries the parent's context
    assert seen == format(process.context.span_id, "016x")


async def test_without_an_sdk_a_job_continues_its_own_trace_in_the_child_and_no_other() -> None:
    from opentelemetry import context, trace

    provider = provider_for("proc-untraced", process_pool_size=1)
    span_parent = provider.task(name="span_parent", executor="process")(tasks.span_parent)
    upstream = trace.SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, trace.TraceFlags(1)
    )
    async with provider:
        token = context.attach(trace.set_span_in_context(trace.NonRecordingSpan(upstream)))
        try:
            traced = await span_parent.enqueue()
        finally:
            context.detach(token)
        untraced = await span_parent.enqueue()
        # one child runs both, one after the other
        assert await traced.result(timeout=30) == "b7ad6b7169203331"
        assert await untraced.result(timeout=30) == "0" * 16


async def test_with_an_sdk_in_the_child_its_span_is_a_child_of_the_process_span(
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    spans_file = tmp_path / "child-spans.jsonl"
    # Read by the children when they import the module (this process imported it without).
    monkeypatch.setenv("LEXIGRAM_TEST_CHILD_SPANS", str(spans_file))
    provider = TaskProvider(queue=MemoryTaskQueue("proc-sdk"), tracer_provider=tracer_provider)
    traced = provider.task(name="traced", executor="process")(traced_tasks.traced)
    async with provider:
        assert await (await traced.enqueue()).result(timeout=30) == "done"
    [process] = [s for s in exporter.get_finished_spans() if s.kind.name == "CONSUMER"]
    assert process.context is not None
    [child] = [json.loads(line) for line in spans_file.read_text().splitlines()]
    assert child["name"] == "run traced"
    assert (child["trace"], child["parent"]) == (process.context.trace_id, process.context.span_id)


async def test_baggage_reaches_the_child_with_or_without_an_sdk(
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry import baggage, context

    monkeypatch.setenv("LEXIGRAM_TEST_CHILD_SPANS", str(tmp_path / "child-spans.jsonl"))
    plain = provider_for("proc-baggage", process_pool_size=1)
    traced = TaskProvider(
        queue=MemoryTaskQueue("proc-baggage-sdk"), tracer_provider=tracer_provider
    )
    without_sdk = plain.task(name="tenant", executor="process")(tasks.tenant)
    with_sdk = traced.task(name="tenant", executor="process")(traced_tasks.traced_tenant)
    async with plain, traced:
        token = context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            handles = [await without_sdk.enqueue(), await with_sdk.enqueue()]
        finally:
            context.detach(token)
        bare = await without_sdk.enqueue()
        assert [await h.result(timeout=30) for h in handles] == ["acme", "acme"]
        assert await bare.result(timeout=30) is None  # the same child: nothing left behind
    # the child's own span is still a child of the worker's process span
    [process] = [s for s in exporter.get_finished_spans() if s.kind.name == "CONSUMER"]
    assert process.context is not None
    lines = (tmp_path / "child-spans.jsonl").read_text().splitlines()
    assert [json.loads(line)["parent"] for line in lines] == [process.context.span_id]


# -- what a child cannot import ----------------------------------------------------------


def test_functions_a_child_cannot_import_are_refused_at_registration() -> None:
    provider = provider_for("proc-refused")

    def closure() -> None: ...

    main = types.FunctionType(tasks.pid.__code__, {}, "in_main")
    main.__module__ = "__main__"
    for fn, reason in [
        (lambda: None, "lambda"),
        (closure, "inside a function"),
        (main, "__main__"),
    ]:
        with pytest.raises(ValueError, match=f"task 'bad'.*{reason}"):
            provider.task(name="bad", executor="process")(fn)
    with pytest.raises(ValueError, match="async def task runs on the worker's event loop"):
        provider.task(name="bad", executor="thread")(tasks.async_add)


async def test_default_executor_process_refuses_to_start_with_a_closure() -> None:
    provider = provider_for("proc-refused-start", default_executor="process")

    @provider.task(name="inner")
    def inner() -> None: ...

    with pytest.raises(ConfigurationError, match="task 'inner'"):
        await provider.start()
    await provider.stop()


async def test_a_function_the_child_cannot_import_fails_its_job_naming_the_task() -> None:
    fake = types.ModuleType("lexigram_parent_only_module")
    sys.modules[fake.__name__] = fake
    try:
        exec("def f():\n    return 1\n", fake.__dict__)
        provider = provider_for("proc-import")
        task = provider.task(name="parent_only", executor="process")(fake.f)
        async with provider:
            with pytest.raises(TaskFailedError) as info:
                await (await task.enqueue()).result(timeout=30)
    finally:
        del sys.modules[fake.__name__]
    assert info.value.error_type == "ImportError"
    assert "task 'parent_only'" in info.value.error_message
    assert "lexigram_parent_only_module" in info.value.error_message


async def test_a_process_job_still_running_at_shutdown_is_returned_and_its_child_killed(
    tmp_path: Path,
) -> None:
    queue = MemoryTaskQueue("proc-shutdown")
    provider = TaskProvider(queue=queue, shutdown_timeout=0.2)
    hang = provider.task(name="hang", executor="process")(tasks.hang)
    await provider.start()
    await hang.enqueue(str(tmp_path / "pid"))
    child = await pid_in(tmp_path / "pid")
    await provider.stop()
    await eventually(lambda: gone(child), 10, message="the child outlived the shutdown")
    async with queue:
        counts = await queue.counts()
        assert (counts.ready, counts.running, counts.failed) == (1, 0, 0)
        [delivery] = await queue.dequeue()
    assert delivery.job is not None and delivery.job.attempt == 1  # no attempt used


# -- a worker killed by SIGKILL ---------------------------------------------------------

_KILLED_WORKER = """
import asyncio, sys
sys.path.insert(0, {tests!r})
import _process_executor_tasks as tasks
from lexigram.tasks import MemoryTaskQueue, TaskProvider

async def main():
    provider = TaskProvider(queue=MemoryTaskQueue("proc-sigkill"))
    hang = provider.task(name="hang", executor="process")(tasks.hang)
    async with provider:
        await hang.enqueue({pid_file!r})
        await asyncio.Event().wait()

asyncio.run(main())
"""


def gone(pid: int) -> bool:
    """No such process, or a zombie waiting for its new parent to reap it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_a_child_dies_with_a_worker_killed_by_sigkill(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = _KILLED_WORKER.format(tests=str(Path(__file__).parent), pid_file=str(pid_file))
    worker = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
    try:
        child = await pid_in(pid_file)
    finally:
        worker.kill()
        await worker.wait()
    await eventually(lambda: gone(child), 10, message=f"child {child} outlived its worker")


# -- the next job, sent ahead into a busy child's pipe ------------------------------------


def in_pipes(provider: TaskProvider) -> int:
    """Jobs sent to a child behind the job it runs (not taken back)."""
    from lexigram.tasks.worker._process_holding import TAKEN_BACK

    return sum(
        len(child.sent) > 1 and child.sent[-1] is not TAKEN_BACK
        for pool in provider.pools.values()
        if pool._processes is not None
        for child in pool._processes._children
    )


async def test_a_job_sent_ahead_and_cancelled_never_runs(tmp_path: Path) -> None:
    provider = provider_for("proc-ahead-cancel", worker_count=2, process_pool_size=1)
    hold = provider.task(name="hold", executor="process")(tasks.hold)
    log_run = provider.task(name="log_run", executor="process")(tasks.log_run)
    log, release = tmp_path / "log", tmp_path / "release"
    async with provider:
        held = await hold.enqueue(str(tmp_path / "held"), str(release))
        child = await pid_in(tmp_path / "held")
        queued = await log_run.enqueue(str(log), "queued", 0)
        await eventually(lambda: in_pipes(provider) == 1, 10)
        assert await queued.cancel() is CancelOutcome.REQUESTED
        with pytest.raises(JobCancelledError):
            await queued.result(timeout=30)
        release.touch()
        assert await held.result(timeout=30) == child
        # the child skipped the job taken back, and goes on with the next
        assert await (await log_run.enqueue(str(log), "after", 0)).result(timeout=30) == child
    assert log.read_text().split() == ["after", str(child)]


async def test_a_job_sent_ahead_to_a_child_that_crashes_runs_on_its_replacement(
    tmp_path: Path,
) -> None:
    provider = provider_for("proc-ahead-crash", worker_count=2, process_pool_size=1)
    crash = provider.task(name="crash", executor="process", max_retries=0)(tasks.hold_then_exit)
    whoami = provider.task(name="whoami", executor="process", max_retries=0)(tasks.whoami)
    release = tmp_path / "release"
    async with provider:
        crashing = await crash.enqueue(str(tmp_path / "pid"), str(release))
        first = await pid_in(tmp_path / "pid")
        queued = await whoami.enqueue()
        await eventually(lambda: in_pipes(provider) == 1, 10)
        release.touch()
        with pytest.raises(TaskFailedError) as crashed:
            await crashing.result(timeout=30)
        me = await queued.result(timeout=30)
    assert crashed.value.error_type == "WorkerProcessCrashed"
    assert "exit code 7" in crashed.value.error_message
    # it had not started: not failed with the crash, and no attempt used
    assert me["attempt"] == 1 and me["pid"] != first


async def test_a_job_sent_ahead_of_a_timed_out_job_runs_on_the_replacement_timed_from_its_start(
    tmp_path: Path,
) -> None:
    # The queued job takes 0.7 s under a timeout of 1 s and waits about 1 s in the pipe
    # behind a job that times out: timed from when it was sent, it would time out too.
    provider = provider_for("proc-ahead-timeout", worker_count=2, process_pool_size=1)
    hang = provider.task(name="hang", executor="process", timeout=1.0)(tasks.hang)
    log_run = provider.task(name="log_run", executor="process", timeout=1.0)(tasks.log_run)
    log = tmp_path / "log"
    async with provider:
        hanging = await hang.enqueue(str(tmp_path / "pid"))
        first = await pid_in(tmp_path / "pid")
        queued = await log_run.enqueue(str(log), "queued", 0.7)
        await eventually(lambda: in_pipes(provider) == 1, 10)
        with pytest.raises(TaskFailedError) as timed_out:
            await hanging.result(timeout=30)
        second = await queued.result(timeout=30)
    assert timed_out.value.error_type == "TaskTimeoutError"
    assert second != first and not alive(first)
    assert log.read_text().split() == ["queued", str(second)]


async def test_a_job_sent_ahead_is_timed_from_when_its_child_starts_it(tmp_path: Path) -> None:
    provider = provider_for("proc-ahead-clock", worker_count=2, process_pool_size=1)
    hold = provider.task(name="hold", executor="process", timeout=60)(tasks.hold)
    log_run = provider.task(name="log_run", executor="process", timeout=1.0)(tasks.log_run)
    release = tmp_path / "release"
    async with provider:
        held = await hold.enqueue(str(tmp_path / "held"), str(release))
        child = await pid_in(tmp_path / "held")
        queued = await log_run.enqueue(str(tmp_path / "log"), "queued", 0.7)
        await eventually(lambda: in_pipes(provider) == 1, 10)
        # Half its timeout in the pipe, then 0.7 s of run: over 1 s since it was sent.
        await asyncio.sleep(0.5)
        release.touch()
        assert await held.result(timeout=30) == child
        assert await queued.result(timeout=30) == child


async def test_no_job_is_sent_ahead_to_a_child_at_its_max_jobs(tmp_path: Path) -> None:
    provider = provider_for(
        "proc-ahead-recycle", worker_count=4, process_pool_size=1, max_jobs_per_child=2
    )
    log_run = provider.task(name="log_run", executor="process")(tasks.log_run)
    log = tmp_path / "log"
    async with provider:
        handles = [await log_run.enqueue(str(log), str(i), 0.2) for i in range(4)]
        pids = [await handle.result(timeout=30) for handle in handles]
    assert sorted(pids.count(pid) for pid in set(pids)) == [2, 2]


async def test_a_child_past_max_memory_starts_no_job_sent_ahead() -> None:
    # Three slots, one child: each job has the next one behind it in the pipe. The
    # child must not start that one once it is past the limit, even if the worker has
    # not read its reply yet.
    limit, step = 120, 20  # MB
    provider = provider_for(
        "proc-ahead-leak", worker_count=3, process_pool_size=1, max_memory_per_child=limit
    )
    leak = provider.task(name="leak", executor="process")(tasks.leak)
    async with provider:
        handles = [await leak.enqueue(step) for _ in range(30)]
        runs = [await handle.result(timeout=30) for handle in handles]
    children = [r["pid"] for r in runs]
    assert len(set(children)) >= 4
    for pid in set(children):
        sizes = [r["rss"] / 2**20 for r in runs if r["pid"] == pid]
        assert all(size <= limit for size in sizes[:-1]), f"child ran on past the limit: {sizes}"


async def test_a_child_past_max_memory_with_a_job_taken_back_is_replaced(tmp_path: Path) -> None:
    # Every job passes a limit of 1 MB. The held job's child has a cancelled job in
    # its pipe, whose SKIPPED answer it never sends once past the limit: it must be
    # replaced all the same, or the pool's only child would never free its place.
    provider = provider_for(
        "proc-ahead-leak-cancel", worker_count=2, process_pool_size=1, max_memory_per_child=1
    )
    hold = provider.task(name="hold", executor="process")(tasks.hold)
    log_run = provider.task(name="log_run", executor="process")(tasks.log_run)
    pid = provider.task(name="pid", executor="process")(tasks.pid)
    release = tmp_path / "release"
    async with provider:
        held = await hold.enqueue(str(tmp_path / "held"), str(release))
        child = await pid_in(tmp_path / "held")
        queued = await log_run.enqueue(str(tmp_path / "log"), "queued", 0)
        await eventually(lambda: in_pipes(provider) == 1, 10)
        assert await queued.cancel() is CancelOutcome.REQUESTED
        with pytest.raises(JobCancelledError):
            await queued.result(timeout=30)
        release.touch()
        assert await held.result(timeout=30) == child
        assert await (await pid.enqueue()).result(timeout=30) != child
    assert not (tmp_path / "log").exists()


async def test_a_job_sent_ahead_at_shutdown_is_returned_without_running(tmp_path: Path) -> None:
    queue = MemoryTaskQueue("proc-ahead-shutdown")
    provider = TaskProvider(queue=queue, shutdown_timeout=0.2, worker_count=2, process_pool_size=1)
    hang = provider.task(name="hang", executor="process")(tasks.hang)
    log_run = provider.task(name="log_run", executor="process")(tasks.log_run)
    log = tmp_path / "log"
    await provider.start()
    await hang.enqueue(str(tmp_path / "pid"))
    child = await pid_in(tmp_path / "pid")
    await log_run.enqueue(str(log), "queued", 0)
    await eventually(lambda: in_pipes(provider) == 1, 10)
    await provider.stop()
    await eventually(lambda: gone(child), 10, message="the child outlived the shutdown")
    async with queue:
        counts = await queue.counts()
        assert (counts.ready, counts.running, counts.failed) == (2, 0, 0)
        deliveries = await queue.dequeue(max_jobs=2)
    assert sorted(d.job.attempt for d in deliveries if d.job is not None) == [1, 1]
    assert not log.exists()
