"""The child side of the process executor: runs one job at a time sent over a pipe.

Kept light: a child imports this module and the tasks' own modules only.
A request is a JSON document naming the task function by module and
qualname; the reply is a JSON document with its result or its error, and
the child's resident memory after the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import os
import resource
import signal
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from opentelemetry import propagate, trace

from lexigram.tasks import current
from lexigram.tasks.errors import TaskError

#: Sent instead of a job: the child exits.
STOP = b"stop"
#: Sent by a child once it has imported the tasks' modules: its jobs' clocks start now.
READY = b"ready"
#: Sent by a child instead of a reply for a job the parent took back before it started.
SKIPPED = b"skipped"

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class ProgressNotSupportedError(TaskError):
    """A process-executor task reported progress or metadata (not supported there)."""


def child_main(
    conn: Connection, modules: list[str], tokens: Any = None, max_memory: int = 0
) -> None:
    """Import ``modules``, then serve jobs from ``conn`` until told to stop or the parent
    goes away.

    Before starting a job the child takes its token from ``tokens`` (a semaphore the
    parent releases once per job sent); a job whose token the parent took back is
    skipped, answered with :data:`SKIPPED`. Each reply gives the child's resident
    memory when ``max_memory`` (bytes) is set (reading it costs about 20 us a job),
    else 0; once past ``max_memory`` the child starts no more jobs and waits to be
    told to stop (the parent takes back the tokens of those it sent ahead).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the worker shuts down, not its child
    _die_with_parent()
    for module in modules:
        # A module that fails here fails its jobs, which name the task and the error.
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    try:
        conn.send_bytes(READY)
    except OSError:
        return
    functions: dict[tuple[str, str], Callable[..., Any]] = {}
    tracer = trace.get_tracer("lexigram.tasks")
    rss = _rss if max_memory else _no_rss
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if data == STOP:
            return
        if tokens is not None and not tokens.acquire(False):
            conn.send_bytes(SKIPPED)  # taken back by the parent before it started
            continue
        reply, used = _run(json.loads(data), functions, tracer, rss)
        conn.send_bytes(reply)
        if max_memory and used > max_memory:
            break
    with contextlib.suppress(EOFError, OSError):
        while conn.recv_bytes() != STOP:
            pass  # to be replaced: run nothing more


def _run(
    request: dict[str, Any],
    functions: dict[tuple[str, str], Callable[..., Any]],
    tracer: trace.Tracer,
    rss: Callable[[], int],
) -> tuple[bytes, int]:
    name = request["task"]
    parent = propagate.extract(request["trace"])
    used = 0
    with tracer.start_as_current_span(f"run {name}", context=parent) as span:
        token = current.seat.set(_ChildSeat(request, span))
        try:
            fn = _function(request, functions)
            result = fn(*request["args"], **request["kwargs"])
            if inspect.iscoroutine(result):
                result = asyncio.run(result)
            used = rss()
            try:
                reply = json.dumps({"ok": True, "result": result, "rss": used})
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"the result of task {name!r} cannot travel as JSON: {exc}"
                ) from None
        except BaseException as exc:  # SystemExit too: it fails the job, not the child
            if isinstance(exc, KeyboardInterrupt):
                raise
            span.record_exception(exc)
            kind = type(exc)
            used = rss()
            reply = json.dumps(
                {
                    "ok": False,
                    "module": kind.__module__,
                    "type": kind.__qualname__,
                    "message": str(exc),
                    "traceback": "".join(traceback.format_exception(exc)),
                    "rss": used,
                }
            )
        finally:
            current.seat.reset(token)
    return reply.encode(), used


def _function(
    request: dict[str, Any], functions: dict[tuple[str, str], Callable[..., Any]]
) -> Callable[..., Any]:
    key = (request["module"], request["qualname"])
    cached = functions.get(key)
    if cached is not None:
        return cached
    try:
        found: Any = importlib.import_module(key[0])
        for part in key[1].split("."):
            found = getattr(found, part)
    except Exception as exc:
        raise ImportError(
            f"task {request['task']!r}: the process executor's child cannot import its "
            f"function {key[0]}.{key[1]} ({type(exc).__name__}: {exc}); a process task "
            "must be a module-level function of an importable module"
        ) from None
    inner = getattr(found, "fn", None)  # the Task that @provider.task put in its place
    fn: Callable[..., Any] = inner if callable(inner) and not inspect.isfunction(found) else found
    functions[key] = fn
    return fn


def _no_rss() -> int:
    return 0


def _rss() -> int:
    """Resident memory in bytes, now (peak where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _die_with_parent() -> None:
    """On Linux, SIGKILL this child when the process that started it dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _NoProgress:
    """The progress host of a child: reports are refused with a clear error."""

    def progress_sink(self, delivery: Any, span: Any) -> current.ProgressSink:
        raise ProgressNotSupportedError(
            "progress and metadata cannot be reported from a task run by the process "
            "executor (current_job() there gives the id, task and attempt only)"
        )


class _ChildSeat:
    """The ``current_job()`` seat in a child: the job's id, task and attempt."""

    def __init__(self, request: dict[str, Any], span: Any) -> None:
        from lexigram.tasks.job import Job

        job = Job(
            task=request["task"],
            id=request["id"],
            attempt=request["attempt"],
            queue=request["queue"],
        )
        marker: Any = object()  # stands for the delivery the worker holds
        self.delivery: Any = marker
        self.span = span
        self.host: current.ProgressHost = _NoProgress()
        self.current: current.CurrentJob | None = current.CurrentJob(job, marker, span, self.host)
