"""Task: a registered handler, enqueueable by name or from the object itself."""

from __future__ import annotations

import functools
import inspect
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from lexigram.tasks.errors import TaskArgumentsError
from lexigram.tasks.job import MAX_PRIORITY, MIN_PRIORITY, Job
from lexigram.tasks.ratelimit import Rate

if TYPE_CHECKING:
    from lexigram.tasks.handle import JobHandle
    from lexigram.tasks.provider import TaskProvider
    from lexigram.tasks.workflows import Signature

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
R2 = TypeVar("R2")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits about ``base * factor**(n-1)``, capped.

    The delay is drawn uniformly from the upper half of that value ("equal
    jitter"), so retries of many failed jobs spread out but never come early.
    """

    base: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def delay(self, attempt: int) -> float:
        ceiling = min(self.max_delay, self.base * self.factor ** max(attempt - 1, 0))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def should_retry(self, exc: BaseException) -> bool:
        return isinstance(exc, self.retry_on)


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    """Per-enqueue settings: when, how urgent, deduplicated by what."""

    delay: float | None = None
    eta: float | None = None
    priority: int | None = None
    dedup_key: str | None = None
    headers: dict[str, str] | None = None
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.delay is not None and self.eta is not None:
            raise ValueError("give delay or eta, not both")
        if self.delay is not None and self.delay < 0:
            raise ValueError(f"delay must be >= 0, got {self.delay}")
        if self.priority is not None and not MIN_PRIORITY <= self.priority <= MAX_PRIORITY:
            raise ValueError(
                f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {self.priority}"
            )

    def run_at(self) -> float | None:
        if self.delay:
            return time.time() + self.delay
        return self.eta


#: The options of a plain ``enqueue`` (none), made once.
NO_OPTIONS = EnqueueOptions()


@dataclass(frozen=True, slots=True)
class TaskLimits:
    """How many runs of a task may overlap, in total and per key (see docs/workers.md, Limits).

    A key function is called with the job's arguments and returns a str or int.
    """

    max_concurrency: int | None = None
    concurrency_key: Callable[..., str | int] | None = None
    max_concurrency_per_key: int | None = None
    rate_limit_key: Callable[..., str | int] | None = None
    #: Whether any concurrency limit applies (read for every job: a field, not a property).
    concurrent: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for option in ("max_concurrency", "max_concurrency_per_key"):
            value = getattr(self, option)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{option} must be an int, got {value!r}")
            if value is not None and value < 1:
                raise ValueError(f"{option} must be >= 1, got {value}")
        for option in ("concurrency_key", "rate_limit_key"):
            value = getattr(self, option)
            if value is not None and not callable(value):
                raise TypeError(f"{option} must be a function of the job's arguments")
        if (self.concurrency_key is None) != (self.max_concurrency_per_key is None):
            raise ValueError(
                "concurrency_key and max_concurrency_per_key go together: the key function "
                "says which runs share a limit, max_concurrency_per_key how many may overlap"
            )
        limited = self.max_concurrency is not None or self.max_concurrency_per_key is not None
        object.__setattr__(self, "concurrent", limited)


class Task(Generic[P, R]):
    """A handler registered on a :class:`~lexigram.tasks.TaskProvider`.

    Calling the task runs the function directly; ``await task.enqueue(...)``
    sends a job with the same arguments, checked by type checkers against the
    function's signature.
    """

    def __init__(
        self,
        fn: Callable[P, Any],
        provider: TaskProvider,
        *,
        name: str,
        is_async: bool,
        max_retries: int = 0,
        timeout: float | None = None,
        retry: RetryPolicy = RetryPolicy(),
        priority: int = 0,
        backend: str | None = None,
        rate_limit: Rate | None = None,
        store_result: bool = True,
        limits: TaskLimits = TaskLimits(),
        executor: str | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if limits.rate_limit_key is not None and rate_limit is None:
            raise ValueError(f"task {name!r}: rate_limit_key needs a rate_limit to apply per key")
        self.fn = fn
        self.provider = provider
        self.name = name
        self.is_async = is_async
        self.max_retries = max_retries
        self.timeout = timeout
        self.retry = retry
        self.priority = priority
        self.backend = backend
        self.rate_limit = rate_limit
        self.store_result = store_result
        self.limits = limits
        #: Whether the key function has exactly the handler's plain parameters, so a
        #: job's positional arguments alone can be passed to it as they are.
        self.key_takes_task_parameters = limits.concurrency_key is not None and (
            _same_parameters(fn, limits.concurrency_key)
        )
        #: ``"thread"``, ``"process"`` or None (the worker's ``default_executor``
        #: for a plain ``def``, the event loop for an ``async def``).
        self.executor = _checked_executor(fn, name, is_async, executor)
        functools.update_wrapper(self, fn)
        self._signature: inspect.Signature | None = None
        # (fewest, most) positional arguments when the signature is plain
        # positional-or-keyword parameters: then a call without keywords is
        # checked by counting, the common case at enqueue.
        self._arity: tuple[int, int] | None = None
        # Their names and defaults, for call_by_name.
        self._names: tuple[str, ...] | None = None
        self._defaults: dict[str, Any] = {}
        try:
            self._signature = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins and C callables have none
            return
        params = self._signature.parameters.values()
        if all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params):
            required = sum(1 for p in params if p.default is p.empty)
            self._arity = (required, len(self._signature.parameters))
            self._names = tuple(self._signature.parameters)
            self._defaults = {p.name: p.default for p in params if p.default is not p.empty}

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self.fn(*args, **kwargs)

    def argument_problem(self, args: Any, kwargs: Any) -> str | None:
        """Why ``args`` and ``kwargs`` cannot be passed to the handler, or None if they can."""
        arity = self._arity
        if arity is not None and not kwargs and arity[0] <= len(args) <= arity[1]:
            return None
        if self._signature is None:
            return None
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            return str(exc)
        return None

    def call_by_name(self, fn: Callable[..., R2], args: Any, kwargs: Any) -> R2:
        """``fn`` called with the job's arguments by parameter name (defaults filled in),
        so ``lambda tenant_id, **_: tenant_id`` finds ``tenant_id`` however it was passed."""
        names = self._names
        if names is not None and len(args) <= len(names):
            # Plain parameters (the common case): no Signature.bind.
            plain = dict(self._defaults)
            plain.update(zip(names, args, strict=False))
            plain.update(kwargs)
            return fn(**plain)
        if self._signature is None:
            return fn(*args, **kwargs)
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError:
            return fn(*args, **kwargs)
        bound.apply_defaults()
        named: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            if self._signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                named.update(value)
            else:
                named[name] = value
        return fn(**named)

    def check_arguments(self, args: Any, kwargs: Any) -> None:
        """Raise :class:`TaskArgumentsError` if the handler cannot take these arguments."""
        arity = self._arity
        if arity is not None and not kwargs and arity[0] <= len(args) <= arity[1]:
            return  # argument_problem's first test, without the call (every enqueue)
        problem = self.argument_problem(args, kwargs)
        if problem is not None:
            raise TaskArgumentsError(
                f"task {self.name!r} cannot take these arguments: {problem} "
                f"(signature: {self.name}{self._signature})"
            )

    def job(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Build the job this call would enqueue (for ``provider.enqueue_many``).

        Raises :class:`TaskArgumentsError` if the arguments do not fit the
        handler's signature.
        """
        return self.provider.build_job(self.name, args, kwargs, NO_OPTIONS)

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Send a job running this task with these arguments."""
        return await self.provider._enqueue_call(self.name, args, kwargs, NO_OPTIONS)

    @overload
    def s(self: Task[P, R], *args: P.args, **kwargs: P.kwargs) -> Signature[R]: ...

    @overload
    def s(
        self: Task[Concatenate[Any, P2], R], *args: P2.args, **kwargs: P2.kwargs
    ) -> Signature[R]: ...

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A signature of this task for a workflow (``chain``, ``group``, ``chord``).

        In a chain, the step gets the previous step's result as its first
        argument, before ``args``, so a chained step leaves that argument out.
        Type checkers accept both forms: every parameter (a first step, a
        group's step) or all but the first (a chained step), each checked
        against the task's parameters. Which one a step needs depends on where
        it stands, so that is checked when the workflow is enqueued. ``si`` is
        the immutable form. See ``docs/workflows.md``.
        """
        from lexigram.tasks.workflows import Signature

        return Signature(self, args, kwargs)

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]:
        """An immutable signature: the step takes exactly these arguments (typed like
        ``enqueue``), not the previous step's result."""
        from lexigram.tasks.workflows import Signature

        return Signature(self, args, kwargs, immutable=True)

    def options(
        self,
        *,
        delay: float | None = None,
        eta: float | None = None,
        priority: int | None = None,
        dedup_key: str | None = None,
        headers: dict[str, str] | None = None,
        backend: str | None = None,
    ) -> BoundTask[P, R]:
        """The same task with per-enqueue options: ``task.options(delay=5).enqueue(...)``.

        ``eta`` is a Unix timestamp; ``dedup_key`` makes a second enqueue with
        the same key, while the first job is pending or running, return the
        first job instead.
        """
        return BoundTask(self, EnqueueOptions(delay, eta, priority, dedup_key, headers, backend))


def _checked_executor(
    fn: Callable[..., Any], name: str, is_async: bool, executor: str | None
) -> str | None:
    if executor not in (None, "thread", "process"):
        raise ValueError(f"task {name!r}: executor must be 'thread' or 'process', got {executor!r}")
    if executor == "thread" and is_async:
        raise ValueError(
            f"task {name!r}: an async def task runs on the worker's event loop; "
            "executor='thread' is for plain def functions (executor='process' runs it "
            "with asyncio.run in a child process)"
        )
    if executor == "process":
        from lexigram.tasks.worker._process_pool import importable_problem

        problem = importable_problem(fn)
        if problem is not None:
            raise ValueError(
                f"task {name!r} cannot use executor='process': {problem}. A child process "
                "imports the function by its module and qualified name, so it must be a "
                "module-level function of an importable module"
            )
    return executor


class BoundTask(Generic[P, R]):
    """A task with enqueue options applied; see :meth:`Task.options`."""

    __slots__ = ("_options", "_task")

    def __init__(self, task: Task[P, R], options: EnqueueOptions) -> None:
        self._task = task
        self._options = options

    def options(self, **changes: Any) -> BoundTask[P, R]:
        return BoundTask(self._task, replace(self._options, **changes))

    def job(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        return self._task.provider.build_job(self._task.name, args, kwargs, self._options)

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        # Routed by the options' backend, else by the task's (as every enqueue is).
        return await self._task.provider._enqueue_call(self._task.name, args, kwargs, self._options)


def _same_parameters(handler: Callable[..., Any], fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` has exactly ``handler``'s plain parameters: names, order and defaults."""
    try:
        ours = list(inspect.signature(handler).parameters.values())
        theirs = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(ours) == len(theirs) and all(
        a.kind is a.POSITIONAL_OR_KEYWORD
        and b.kind is b.POSITIONAL_OR_KEYWORD
        and a.name == b.name
        and a.default is b.default
        for a, b in zip(ours, theirs, strict=True)
    )
