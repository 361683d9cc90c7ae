"""The child side of the process executor: runs one job at a time sent over a pipe.

Kept light: a child imports this module and the tasks' own modules only.
A request is a JSON document naming the task function by module and
qualname. A reply is ``o`` (a result) or ``e`` (an error), the child's
resident memory after the job in decimal, a space, then the result as JSON,
or the error as a JSON document (:func:`read_reply` takes it apart).

The child's code around a job runs with cold caches (the job, and the
worker woken by its reply, ran on the core in between), so each step it
saves per job counts several times over: no trace context work when there
is none and no SDK, the :class:`~lexigram.tasks.current.CurrentJob` built
only when the task asks for it, no encoder for a None result.
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
import struct
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from opentelemetry import context, propagate, trace

from lexigram.tasks import current
from lexigram.tasks.errors import TaskError

#: Sent instead of a job: the child exits.
STOP = b"stop"
#: Sent by a child once it has imported the tasks' modules: its jobs' clocks start now.
READY = b"ready"
#: Sent by a child instead of a reply for a job the parent took back before it started.
SKIPPED = b"skipped"

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
#: The tracer providers of the OpenTelemetry API alone (no SDK): their spans record nothing.
_NO_SDK = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_UNKNOWN: Any = object()
_EMPTY = context.Context()  # what an empty carrier extracts to
_OK = ord("o")  # the first byte of a reply with a result
#: multiprocessing's framing of a message: its length (-1, then 8 bytes, past 2 GiB).
_SIZE = struct.Struct("!i")
_LONG_SIZE = struct.Struct("!Q")


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
    memory when ``max_memory`` (bytes) is set (reading it costs about 1 us a job),
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
    rss = _memory_reader() if max_memory else _no_rss
    seat = _ChildSeat()
    current.seat.set(seat)  # once: each job only fills the seat in
    fd = conn.fileno()
    messages = Messages(fd)
    while True:
        try:
            data = messages.receive()
        except (EOFError, OSError):
            return
        if data == STOP:
            return
        if tokens is not None and not tokens.acquire(False):
            write_message(fd, SKIPPED)  # taken back by the parent before it started
            continue
        reply, used = _run(json.loads(data), functions, tracer, rss, seat)
        write_message(fd, reply)
        if max_memory and used > max_memory:
            break
    with contextlib.suppress(EOFError, OSError):
        while messages.receive() != STOP:
            pass  # to be replaced: run nothing more


def write_message(fd: int, data: bytes) -> None:
    """Write ``data`` to the pipe ``fd`` as one framed message (in one system call
    unless the pipe is full)."""
    size = len(data)
    header = _SIZE.pack(size) if size <= 0x7FFFFFFF else _SIZE.pack(-1) + _LONG_SIZE.pack(size)
    view = memoryview(header + data)
    while view:
        view = view[os.write(fd, view) :]


class Messages:
    """The framed messages read from a pipe, several at a time when they are there
    (one system call a message instead of ``Connection.recv_bytes``'s two)."""

    __slots__ = ("_buffer", "_fd")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()

    def next(self) -> bytes | None:
        """The next whole message read so far, or None."""
        buffer = self._buffer
        if len(buffer) < 4:
            return None
        (size,) = _SIZE.unpack_from(buffer)
        start = 4
        if size == -1:
            if len(buffer) < 12:
                return None
            (size,) = _LONG_SIZE.unpack_from(buffer, 4)
            start = 12
        end = start + size
        if len(buffer) < end:
            return None
        message = bytes(buffer[start:end])
        del buffer[:end]
        return message

    def read(self) -> bool:
        """Read what the pipe has (blocking until it has something); False at its end."""
        chunk = os.read(self._fd, max(65536, self._missing()))
        if not chunk:
            return False
        self._buffer += chunk
        return True

    def receive(self) -> bytes:
        """The next message, waiting for it; EOFError at the pipe's end."""
        while (message := self.next()) is None:
            if not self.read():
                raise EOFError
        return message

    def _missing(self) -> int:
        """Bytes still to come of the message begun in the buffer (0 if unknown)."""
        buffer = self._buffer
        if len(buffer) < 4:
            return 0
        (size,) = _SIZE.unpack_from(buffer)
        return size + 4 - len(buffer) if size >= 0 else 0


def read_reply(message: bytes) -> tuple[bool, Any, int]:
    """A child's reply: whether the job succeeded, its result (or the error's
    document for :func:`~lexigram.tasks.worker._process_support.rebuild`), and the
    child's resident memory."""
    space = message.index(b" ")
    body = message[space + 1 :]
    value = None if body == b"null" else json.loads(body)
    return message[0] == _OK, value, int(message[1:space])


def _run(
    request: dict[str, Any],
    functions: dict[tuple[str, str], Callable[..., Any]],
    tracer: trace.Tracer,
    rss: Callable[[], int],
    seat: _ChildSeat,
) -> tuple[bytes, int]:
    carrier = request["trace"]
    # The worker's context (its process span and any baggage) is current for the call;
    # the detach also undoes whatever the job left attached, for the child's next job.
    attached = context.attach(propagate.extract(carrier) if carrier else _EMPTY)
    try:
        if _no_sdk():
            # What the API's own tracer does, minus its machinery: the span is the
            # worker's (a non-recording one carrying its context), or none.
            return _seated(request, functions, rss, seat, trace.get_current_span())
        with tracer.start_as_current_span(f"run {request['task']}") as span:
            return _seated(request, functions, rss, seat, span)
    finally:
        context.detach(attached)


def _seated(
    request: dict[str, Any],
    functions: dict[tuple[str, str], Callable[..., Any]],
    rss: Callable[[], int],
    seat: _ChildSeat,
    span: Any,
) -> tuple[bytes, int]:
    seat.start(request, span)
    try:
        return _call(request, functions, rss, span)
    finally:
        seat.stop()


def _no_sdk() -> bool:
    """Whether no SDK tracer provider is set (the API's tracer then records nothing).

    Read from the API's global, as its own proxy tracer reads it (the public
    getter looks in the environment on each call while none is set).
    """
    provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is _UNKNOWN:  # an API without that global
        provider = trace.get_tracer_provider()
    return provider is None or isinstance(provider, _NO_SDK)


def _call(
    request: dict[str, Any],
    functions: dict[tuple[str, str], Callable[..., Any]],
    rss: Callable[[], int],
    span: trace.Span,
) -> tuple[bytes, int]:
    """Run the job's function; its reply (result or error) and the memory used."""
    try:
        fn = _function(request, functions)
        result = fn(*request["args"], **request["kwargs"])
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        used = rss()
        try:
            body = b"null" if result is None else json.dumps(result).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"the result of task {request['task']!r} cannot travel as JSON: {exc}"
            ) from None
        return b"o%d %s" % (used, body), used
    except BaseException as exc:  # SystemExit too: it fails the job, not the child
        if isinstance(exc, KeyboardInterrupt):
            raise
        span.record_exception(exc)
        kind = type(exc)
        used = rss()
        error = {
            "module": kind.__module__,
            "type": kind.__qualname__,
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc)),
        }
        return b"e%d %s" % (used, json.dumps(error).encode()), used


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


def _memory_reader() -> Callable[[], int]:
    """What reads this process's resident memory in bytes: now, from
    ``/proc/self/statm`` kept open (one read a job), or its peak where there is no
    ``/proc``."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
    except OSError:
        return _peak_rss

    def rss() -> int:
        try:
            return int(os.pread(fd, 256, 0).split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            return _peak_rss()

    return rss


def _peak_rss() -> int:
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
    """The ``current_job()`` seat of a child, set once: the running job's id, task and
    attempt, its :class:`~lexigram.tasks.current.CurrentJob` built on first use."""

    __slots__ = ("current", "delivery", "host", "span")

    def __init__(self) -> None:
        self.delivery: Any = None
        self.span: Any = None
        self.current: current.CurrentJob | None = None
        self.host: current.ProgressHost = _NoProgress()

    def start(self, request: dict[str, Any], span: Any) -> None:
        self.delivery = _ChildDelivery(request)
        self.span = span
        self.current = None

    def stop(self) -> None:
        self.delivery = self.span = self.current = None


class _ChildDelivery:
    """Stands for the delivery the worker holds: its job is built when asked for."""

    __slots__ = ("_job", "_request")

    def __init__(self, request: dict[str, Any]) -> None:
        self._request = request
        self._job: Any = None

    @property
    def job(self) -> Any:
        if self._job is None:
            from lexigram.tasks.job import Job

            request = self._request
            self._job = Job(
                task=request["task"],
                id=request["id"],
                attempt=request["attempt"],
                queue=request["queue"],
            )
        return self._job
