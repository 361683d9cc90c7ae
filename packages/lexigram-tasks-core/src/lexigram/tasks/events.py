"""Lifecycle events and the bus that delivers them to subscribers.

Events are built only when someone subscribed to their type, so an
unobserved worker pays nothing for them. A subscriber that raises is logged
and does not affect the job.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lexigram.tasks.job import Job

logger = logging.getLogger("lexigram.tasks.events")


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """Base of every lifecycle event."""

    job: Job
    queue: str
    worker_id: str
    timestamp: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class TaskStartedEvent(TaskEvent):
    """A worker began running a job (``job.attempt`` is this run's number, from 1)."""


@dataclass(frozen=True, slots=True)
class TaskCompletedEvent(TaskEvent):
    """The handler returned; ``result`` is its return value."""

    duration: float = 0.0
    result: Any = None


@dataclass(frozen=True, slots=True)
class TaskFailedEvent(TaskEvent):
    """The handler raised or timed out. ``will_retry`` says whether it runs again."""

    error: BaseException | None = None
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    duration: float = 0.0
    will_retry: bool = False


@dataclass(frozen=True, slots=True)
class TaskRetryingEvent(TaskEvent):
    """The job goes back to the queue to run again after ``delay`` seconds."""

    delay: float = 0.0
    error_type: str = ""
    error_message: str = ""


@dataclass(frozen=True, slots=True)
class TaskCancelledEvent(TaskEvent):
    """The job ended ``cancelled``: stopped while it ran, or leased and then cancelled
    before it started (``duration`` 0). No completed or failed event follows it."""

    duration: float = 0.0


@dataclass(frozen=True, slots=True)
class TaskDeadLetteredEvent:
    """A job (or a message that is not a valid job) was set aside for good.

    ``job`` is ``None`` for a malformed message; ``payload`` holds its bytes.
    """

    job: Job | None
    payload: bytes
    reason: str
    queue: str
    worker_id: str
    timestamp: float = field(default_factory=time.time)


E = TypeVar("E")
Handler = Callable[[E], Awaitable[None] | None]


class EventBus:
    """Subscribe handlers (sync or async) to event types; subclasses are matched too."""

    def __init__(self) -> None:
        self._handlers: dict[type[Any], list[Handler[Any]]] = {}
        self._resolved: dict[type[Any], tuple[Handler[Any], ...]] = {}

    def subscribe(self, event_type: type[E], handler: Handler[E]) -> Callable[[], None]:
        """Call ``handler`` for each event of ``event_type``; returns an unsubscribe function."""
        self._handlers.setdefault(event_type, []).append(handler)
        self._resolved.clear()

        def unsubscribe() -> None:
            self._handlers[event_type].remove(handler)
            self._resolved.clear()

        return unsubscribe

    def on(self, event_type: type[E]) -> Callable[[Handler[E]], Handler[E]]:
        """Decorator form of :meth:`subscribe`."""

        def decorator(handler: Handler[E]) -> Handler[E]:
            self.subscribe(event_type, handler)
            return handler

        return decorator

    def wants(self, event_type: type[Any]) -> bool:
        """True if anyone listens to ``event_type``: build the event only then."""
        return bool(self._for(event_type))

    async def emit(self, event: object) -> None:
        for handler in self._for(type(event)):
            try:
                outcome = handler(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                logger.exception("event subscriber %r failed on %s", handler, type(event).__name__)

    def _for(self, event_type: type[Any]) -> tuple[Handler[Any], ...]:
        handlers = self._resolved.get(event_type)
        if handlers is None:
            handlers = tuple(
                h
                for registered, hs in self._handlers.items()
                if issubclass(event_type, registered)
                for h in hs
            )
            self._resolved[event_type] = handlers
        return handlers
