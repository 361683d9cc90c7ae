"""FastAPI and Starlette: connect a TaskProvider for the life of the app, hand it to routes.

``tasks_lifespan(provider)`` is an app's ``lifespan=``: it connects the
provider as a producer when the server starts and disconnects it when the
server stops (``workers=True`` also runs its workers in the web process),
and puts the provider into the lifespan state, which Starlette copies into
every request. :func:`get_provider` reads it back from a request, so it is
both a FastAPI dependency (``Depends(get_provider)``) and a plain call in a
Starlette endpoint; :func:`task_dependency` and :func:`get_task` hand out a
registered task the same way. Routes that take the provider from the
request rather than from an import can be given another one in tests
(``app.dependency_overrides[get_provider] = ...``).

Only Starlette is needed (the ``starlette`` extra; FastAPI brings it too).
FastAPI itself is imported only by :func:`task_dependency`, for its
``Depends``. A request's trace continues into the jobs it enqueues when the
app runs OpenTelemetry's ASGI middleware (see docs/integrations/fastapi.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ParamSpec, TypeVar, overload

from lexigram.tasks.errors import ConfigurationError, UnknownTaskError
from lexigram.tasks.optional import import_optional
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.task import Task

import_optional(
    "starlette",
    "lexigram-tasks-core",
    extra="starlette",
    feature="lexigram.tasks.integrations.asgi",
)
from starlette.requests import HTTPConnection  # noqa: E402  (after the friendlier check above)

__all__ = [
    "STATE_KEY",
    "TasksLifespan",
    "get_provider",
    "get_task",
    "task_dependency",
    "tasks_lifespan",
]

P = ParamSpec("P")
R = TypeVar("R")

#: The key of the provider in the lifespan state (``request.state.lexigram_tasks``).
STATE_KEY = "lexigram_tasks"

AppLifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]


class TasksLifespan:
    """An ASGI app's ``lifespan=``: the provider is connected while the app serves.

    On start-up it connects ``provider`` (with ``workers=True``, or the names
    of the backends whose workers to run, it starts worker pools in this
    process as ``async with provider`` does), then enters the app's own
    ``lifespan``, if one is given, so that code there can already enqueue.
    Shutdown runs in the reverse order. The state it yields holds the
    provider under :data:`STATE_KEY`, merged with the state the app's own
    lifespan yields.

    Call it with the app to use it inside another lifespan:
    ``async with tasks_lifespan(provider)(app) as state: ...``.
    """

    def __init__(
        self,
        provider: TaskProvider,
        *,
        workers: bool | Iterable[str] = False,
        lifespan: AppLifespan | None = None,
    ) -> None:
        if not isinstance(provider, TaskProvider):
            raise TypeError(
                f"tasks_lifespan() needs a TaskProvider, got {type(provider).__name__}: "
                "pass the provider your tasks are registered with"
            )
        if lifespan is not None and not callable(lifespan):
            raise TypeError(
                "lifespan must be the app's own lifespan function (app -> async context "
                f"manager), got {type(lifespan).__name__}"
            )
        if isinstance(workers, str):
            raise TypeError(
                f"workers takes True or a list of backend names, not the string {workers!r}"
            )
        self.provider = provider
        self.workers: list[str] | None = None if isinstance(workers, bool) else list(workers)
        self.run_workers = workers is True or bool(self.workers)
        self.lifespan = lifespan
        if self.workers:
            unknown = [name for name in self.workers if name not in provider.backends]
            if unknown:
                raise ValueError(
                    f"workers names unknown backends {unknown} "
                    f"(backends: {', '.join(provider.backends)})"
                )

    def __call__(self, app: Any) -> AbstractAsyncContextManager[dict[str, Any]]:
        return self._serving(app)

    @asynccontextmanager
    async def _serving(self, app: Any) -> AsyncIterator[dict[str, Any]]:
        if self.run_workers:
            await self.provider.start(self.workers)
        else:
            await self.provider.connect()
        try:
            if self.lifespan is None:
                yield {STATE_KEY: self.provider}
            else:
                async with self.lifespan(app) as own_state:
                    yield {**(own_state or {}), STATE_KEY: self.provider}
        finally:
            if self.run_workers:
                await self.provider.stop()
            else:
                await self.provider.disconnect()


def tasks_lifespan(
    provider: TaskProvider,
    *,
    workers: bool | Iterable[str] = False,
    lifespan: AppLifespan | None = None,
) -> TasksLifespan:
    """``FastAPI(lifespan=tasks_lifespan(provider))``: see :class:`TasksLifespan`."""
    return TasksLifespan(provider, workers=workers, lifespan=lifespan)


def get_provider(connection: HTTPConnection) -> TaskProvider:
    """The provider :func:`tasks_lifespan` connected, read from a request (or websocket).

    A FastAPI dependency as it stands (``Depends(get_provider)``); in
    Starlette, call it with the request. Raises
    :class:`~lexigram.tasks.ConfigurationError` when the app was not started
    with ``tasks_lifespan``.
    """
    provider = connection.scope.get("state", {}).get(STATE_KEY)
    if not isinstance(provider, TaskProvider):
        raise ConfigurationError(
            "no TaskProvider in this request's lifespan state: start the app with "
            "lifespan=tasks_lifespan(provider) (on the outermost app, when apps are mounted)"
        )
    return provider


@overload
def get_task(connection: HTTPConnection, task: Task[P, R]) -> Task[P, R]: ...


@overload
def get_task(connection: HTTPConnection, task: str) -> Task[..., Any]: ...


def get_task(connection: HTTPConnection, task: Task[Any, Any] | str) -> Task[Any, Any]:
    """The task registered under ``task``'s name on the request's provider."""
    return _registered(get_provider(connection), task)


@overload
def task_dependency(task: Task[P, R]) -> Callable[..., Task[P, R]]: ...


@overload
def task_dependency(task: str) -> Callable[..., Task[..., Any]]: ...


def task_dependency(task: Task[Any, Any] | str) -> Callable[..., Task[Any, Any]]:
    """A FastAPI dependency handing a route the task named ``task`` (a name or a task).

    The task is looked up on the provider :func:`get_provider` gives, so an
    override of ``get_provider`` in tests also swaps the tasks.
    """
    if not isinstance(task, Task | str):
        raise TypeError(f"task_dependency() takes a task or a task name, got {type(task).__name__}")
    fastapi = import_optional(
        "fastapi", "lexigram-tasks-core", extra="fastapi", feature="task_dependency"
    )
    provider_dependency = fastapi.Depends(get_provider)

    def dependency(provider: TaskProvider = provider_dependency) -> Task[Any, Any]:
        return _registered(provider, task)

    return dependency


def _registered(provider: TaskProvider, task: Task[Any, Any] | str) -> Task[Any, Any]:
    name = task if isinstance(task, str) else task.name
    found = provider.tasks.get(name)
    if found is None:
        registered = ", ".join(sorted(provider.tasks)) or "none"
        raise UnknownTaskError(
            f"no task named {name!r} is registered with the app's provider "
            f"(registered: {registered})"
        )
    return found
