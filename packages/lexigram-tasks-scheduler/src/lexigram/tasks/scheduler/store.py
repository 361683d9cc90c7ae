"""Where runtime templates, pause flags and each template's last fire time live.

The **cursor** (last fire time) of a template is the heart of exactly-once
firing: :meth:`TemplateStore.claim` advances it atomically, only forward, so
of several schedulers that see the same tick due, exactly one wins it and
enqueues. The same cursor tells a restarted scheduler which ticks it missed.
Several scheduler processes therefore need a *shared* store (Redis or
PostgreSQL); :class:`MemoryTemplateStore` is shared only inside one process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.plugins import TEMPLATE_STORES
from lexigram.tasks.scheduler.errors import TemplateExistsError
from lexigram.tasks.scheduler.template import ScheduleTemplate


@dataclass(frozen=True, slots=True)
class TemplateState:
    """Shared state of one template (code-defined or runtime)."""

    last_fire: float
    paused: bool = False


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """Everything a scheduler reads once per tick."""

    #: Runtime templates as stored documents (see :meth:`ScheduleTemplate.to_dict`).
    templates: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: State by template name; a name without state has not been seen yet.
    states: Mapping[str, TemplateState] = field(default_factory=dict)


@runtime_checkable
class TemplateStore(Protocol):
    """Shared storage of a scheduler deployment.

    Every method is atomic on its own; ``claim`` is the only one that
    decides who fires a tick.
    """

    async def connect(self) -> None:
        """Open connections (and create tables/keys as needed). Idempotent."""

    async def disconnect(self) -> None:
        """Close connections. Idempotent."""

    async def load(self) -> StoreSnapshot:
        """Runtime templates and every template's state."""

    async def init_cursor(self, name: str, now: float) -> float:
        """Give ``name`` the cursor ``now`` unless it has one; return the stored cursor."""

    async def claim(self, name: str, fire_time: float) -> float | None:
        """Advance the cursor of ``name`` to ``fire_time`` if it is behind it.

        Returns the previous cursor if this call advanced it (the caller fires
        the ticks in ``(previous, fire_time]``), ``None`` if the cursor was
        already at or past ``fire_time`` (someone else fired them) or unknown.
        """

    async def release(self, name: str, fire_time: float, previous: float) -> None:
        """Undo a claim whose jobs could not be enqueued: set the cursor back to
        ``previous`` if it is still ``fire_time``."""

    async def add_template(self, template: ScheduleTemplate, now: float) -> None:
        """Store a runtime template, unpaused, with cursor ``now``.

        Raises :class:`TemplateExistsError` if a runtime template has that name.
        """

    async def remove_template(self, name: str) -> bool:
        """Delete a runtime template and its state; False if there was none."""

    async def set_paused(self, name: str, paused: bool, now: float) -> None:
        """Pause or resume ``name``. Resuming moves the cursor up to ``now``, so
        ticks that fell in the pause are not caught up."""


class MemoryTemplateStore:
    """A store inside this process: schedulers sharing this object fire each
    tick once; separate processes do not share it (each would fire)."""

    def __init__(self) -> None:
        self._templates: dict[str, dict[str, Any]] = {}
        self._states: dict[str, TemplateState] = {}

    def __repr__(self) -> str:
        return "MemoryTemplateStore()"

    async def connect(self) -> None:
        return None

    async def disconnect(self) -> None:
        return None

    async def load(self) -> StoreSnapshot:
        return StoreSnapshot(
            {name: dict(doc) for name, doc in self._templates.items()}, dict(self._states)
        )

    async def init_cursor(self, name: str, now: float) -> float:
        state = self._states.setdefault(name, TemplateState(last_fire=now))
        return state.last_fire

    async def claim(self, name: str, fire_time: float) -> float | None:
        state = self._states.get(name)
        if state is None or state.last_fire >= fire_time:
            return None
        self._states[name] = TemplateState(fire_time, state.paused)
        return state.last_fire

    async def release(self, name: str, fire_time: float, previous: float) -> None:
        state = self._states.get(name)
        if state is not None and state.last_fire == fire_time:
            self._states[name] = TemplateState(previous, state.paused)

    async def add_template(self, template: ScheduleTemplate, now: float) -> None:
        if template.name in self._templates:
            raise TemplateExistsError(f"a runtime schedule named {template.name!r} already exists")
        self._templates[template.name] = template.to_dict()
        self._states[template.name] = TemplateState(now)

    async def remove_template(self, name: str) -> bool:
        self._states.pop(name, None)
        return self._templates.pop(name, None) is not None

    async def set_paused(self, name: str, paused: bool, now: float) -> None:
        state = self._states.get(name)
        if state is None:
            self._states[name] = TemplateState(now, paused)
        elif paused:
            self._states[name] = TemplateState(state.last_fire, True)
        else:
            self._states[name] = TemplateState(max(state.last_fire, now), False)


#: URL schemes and the template store type (entry point name) that serves each;
#: any other scheme is looked up as a type of its own name.
URL_SCHEMES: dict[str, str] = {
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "redis+sentinel": "redis",
    "rediss+sentinel": "redis",
    "postgres": "postgres",
    "postgresql": "postgres",
}


def store_from_url(url: str, **options: Any) -> TemplateStore:
    """A template store: ``"memory"``, or a URL whose scheme names the store type.

    Types come from the ``lexigram.tasks.scheduler.stores`` entry-point group
    (the built-ins too); the store is called with the URL and ``options``.
    Raises :class:`~lexigram.tasks.ConfigurationError` for an unknown type or,
    with the pip command, a store whose extra is not installed.
    """
    if url == "memory":
        factory: Callable[..., TemplateStore] = TEMPLATE_STORES.load("memory")
        return factory(**options)
    scheme = url.partition("://")[0].lower()
    factory = TEMPLATE_STORES.load(URL_SCHEMES.get(scheme, scheme))
    try:
        return factory(url, **options)
    except ImportError as exc:  # a store that imports its extra's packages when created
        raise ConfigurationError(str(exc)) from exc
