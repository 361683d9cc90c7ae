"""TaskBackendRegistry: the ``type:`` string of a config to a backend factory.

Built-in and third-party backends register through the
``lexigram.tasks.backends`` entry-point group, so installing a package is
enough to make its type available; :meth:`TaskBackendRegistry.register` adds
one at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, ClassVar

from lexigram.tasks.errors import BackendNotFoundError
from lexigram.tasks.protocol import TaskQueueProtocol

BackendFactory = Callable[..., TaskQueueProtocol]

ENTRY_POINT_GROUP = "lexigram.tasks.backends"

#: Built-in backend types and the distribution that provides each.
BUILTIN_BACKENDS: dict[str, str] = {
    "memory": "lexigram-tasks-core",
    "redis": "lexigram-tasks-redis",
    "rabbitmq": "lexigram-tasks-rabbitmq",
    "postgres": "lexigram-tasks-postgres",
}


class TaskBackendRegistry:
    """Maps backend type strings to factories (usually the backend class)."""

    _default: ClassVar[TaskBackendRegistry | None] = None

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self._factories: dict[str, BackendFactory] = {}
        self._load_entry_points = load_entry_points
        self._loaded = False

    @classmethod
    def default(cls) -> TaskBackendRegistry:
        """The process-wide registry that configuration loading uses."""
        if cls._default is None:
            cls._default = cls()
        return cls._default

    def register(self, type_name: str, factory: BackendFactory, *, replace: bool = False) -> None:
        """Make ``type_name`` create backends with ``factory(**options)``."""
        self._discover()
        if type_name in self._factories and not replace:
            raise ValueError(f"backend type {type_name!r} is already registered")
        self._factories[type_name] = factory

    def types(self) -> list[str]:
        """Every registered type string, sorted."""
        self._discover()
        return sorted(self._factories)

    def get(self, type_name: str) -> BackendFactory:
        """The factory for ``type_name``; :class:`BackendNotFoundError` explains a miss."""
        self._discover()
        try:
            return self._factories[type_name]
        except KeyError:
            raise BackendNotFoundError(self._explain_missing(type_name)) from None

    def resolve(self, type_name: str) -> BackendFactory:
        """The factory for ``type_name`` itself, imported now (e.g. to inspect its signature).

        A registered entry point that cannot be imported raises
        :class:`BackendNotFoundError` naming its target and the import error.
        """
        factory = self.get(type_name)
        if not isinstance(factory, _LazyFactory):
            return factory
        try:
            return factory.load()
        except Exception as exc:
            raise BackendNotFoundError(
                f"backend type {type_name!r} ({factory.target}) could not be loaded: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def create(self, type_name: str, **options: Any) -> TaskQueueProtocol:
        """Build a backend of ``type_name`` with ``options`` as keyword arguments."""
        return self.get(type_name)(**options)

    def _discover(self) -> None:
        if self._loaded or not self._load_entry_points:
            return
        self._loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name not in self._factories:
                self._factories[ep.name] = _LazyFactory(ep.name, ep.value)

    def _explain_missing(self, type_name: str) -> str:
        known = ", ".join(repr(t) for t in self.types()) or "none"
        message = f"unknown backend type {type_name!r}; registered types: {known}"
        dist = BUILTIN_BACKENDS.get(type_name)
        if dist is not None:
            message += f". Type {type_name!r} is provided by {dist}: pip install {dist}"
        return message


class _LazyFactory:
    """Imports an entry point's target only when a backend is created."""

    def __init__(self, name: str, target: str) -> None:
        self.name = name
        self.target = target
        self._loaded: BackendFactory | None = None

    def load(self) -> BackendFactory:
        if self._loaded is None:
            module_name, _, attr = self.target.partition(":")
            module = __import__(module_name, fromlist=[attr])
            obj: Any = module
            for part in attr.split("."):
                obj = getattr(obj, part)
            self._loaded = obj
        return self._loaded

    def __call__(self, **options: Any) -> TaskQueueProtocol:
        return self.load()(**options)
