"""TaskBackendRegistry: the ``type:`` string of a config to a backend factory.

Built-in and third-party backends register the same way, through the
``lexigram.tasks.backends`` entry-point group (:data:`lexigram.tasks.plugins.BACKENDS`),
so installing a package is enough to make its type available;
:meth:`TaskBackendRegistry.register` adds one at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint
from typing import Any, ClassVar

from lexigram.tasks.errors import BackendNotFoundError
from lexigram.tasks.plugins import BACKENDS
from lexigram.tasks.protocol import TaskQueueProtocol

BackendFactory = Callable[..., TaskQueueProtocol]

ENTRY_POINT_GROUP = BACKENDS.group

#: Built-in backend types and the distribution that provides each.
BUILTIN_BACKENDS: dict[str, str] = dict(BACKENDS.provided_by)


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
            raise BackendNotFoundError(BACKENDS.not_found(type_name, self.types())) from None

    def resolve(self, type_name: str) -> BackendFactory:
        """The factory for ``type_name`` itself, imported now (e.g. to inspect its signature).

        A registered entry point that cannot be imported raises
        :class:`BackendNotFoundError` naming its target and the import error
        (and the pip command when a distribution or client library is missing).
        """
        factory = self.get(type_name)
        return factory.load() if isinstance(factory, _LazyFactory) else factory

    def create(self, type_name: str, **options: Any) -> TaskQueueProtocol:
        """Build a backend of ``type_name`` with ``options`` as keyword arguments."""
        return self.get(type_name)(**options)

    def _discover(self) -> None:
        if self._loaded or not self._load_entry_points:
            return
        self._loaded = True
        for name, ep in BACKENDS.entry_points().items():
            self._factories.setdefault(name, _LazyFactory(ep))


class _LazyFactory:
    """Imports an entry point's target only when a backend is created."""

    def __init__(self, ep: EntryPoint) -> None:
        self.name = ep.name
        self.target = ep.value
        self._ep = ep
        self._loaded: BackendFactory | None = None

    def load(self) -> BackendFactory:
        if self._loaded is None:
            self._loaded = BACKENDS.load_entry_point(self._ep)
        return self._loaded

    def __call__(self, **options: Any) -> TaskQueueProtocol:
        return self.load()(**options)
