"""Turning a ``type:`` string (or a plugin's section) into the factory that builds it,
and the :class:`Component` that keeps the two together until it is created.

Every lookup goes through :mod:`lexigram.tasks.plugins`: core names no
optional distribution here, the DLQ included (it registers the
``dead_letter`` section in the ``lexigram.tasks.config`` group).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.plugins import CONFIG_SECTIONS, PluginGroup
from lexigram.tasks.redact import redact_urls
from lexigram.tasks.registry import TaskBackendRegistry

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Component:
    """A configured backend, result store, rate limiter or dead-letter sink, not yet created."""

    type: str
    factory: Callable[..., Any]
    options: dict[str, Any]
    #: ``file:line`` and key path, for errors raised when it is created.
    where: str
    key: str
    label: str

    def __repr__(self) -> str:
        options = ", ".join(
            f"{k}={redact_urls(v)!r}" if isinstance(v, str) else f"{k}={v!r}"
            for k, v in self.options.items()
        )
        return (
            f"Component({', '.join([repr(self.type), options] if options else [repr(self.type)])})"
        )

    def create(self, **extra: Any) -> Any:
        """Call the factory with the configured keyword arguments (and ``extra``)."""
        try:
            return self.factory(**self.options, **extra)
        except (ValueError, TypeError, LookupError, ConfigurationError) as exc:
            raise ConfigurationError(
                f"{self.where}: {self.key}: cannot create the {self.label} of type "
                f"{self.type!r}: {redact_urls(str(exc))}"
            ) from exc


class ConfigKeyError(ConfigurationError):
    """A problem with one key of a section that a plugin reads.

    ``key`` is relative to the section (``("storage",)``, ``()`` for the
    section itself) and ``reason`` says what is wrong; the configuration
    loader reports it at that key's file and line.
    """

    def __init__(self, section: str, key: KeyPath, reason: str) -> None:
        where = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in key)
        super().__init__(f"{section}{where}: {reason}")
        self.section = section
        self.key = key
        self.reason = reason


def resolve_component(group: PluginGroup, type_name: str) -> Callable[..., Any]:
    """The factory registered as ``type_name`` in ``group`` (a ConfigurationError if none)."""
    factory: Callable[..., Any] = group.load(type_name)
    return factory


def resolve_section(name: str, options: Mapping[str, Any]) -> Callable[..., Any]:
    """The factory a plugin's section builds: the plugin checks ``options`` now
    (raising :class:`ConfigKeyError` or :class:`ConfigurationError`) and returns
    a callable that creates the component for each provider."""
    section: Callable[[Mapping[str, Any]], Callable[..., Any]] = CONFIG_SECTIONS.load(name)
    return section(options)


def resolve_backend(registry: TaskBackendRegistry, type_name: str) -> Callable[..., Any]:
    """The backend factory for ``type_name``, imported now so its signature can be checked."""
    return registry.resolve(type_name)
