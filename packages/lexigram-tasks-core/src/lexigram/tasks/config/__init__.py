"""Loading ``lexigram.yaml``: the ``tasks:`` section into a :class:`TaskProvider`.

``TaskProvider.from_config(path_or_mapping)`` is the usual entry point;
:func:`load_config` validates without building anything, for tools. See
``docs/configuration.md`` for every key.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pydantic

from lexigram.tasks.config._components import (
    ConfigKeyError,
    resolve_backend,
    resolve_component,
    resolve_section,
)
from lexigram.tasks.config._models import (
    SECTION_KEYS,
    ComponentSection,
    ConfigDocument,
    NamedBackendSection,
    TasksSection,
)
from lexigram.tasks.config._signature import OptionsValidator
from lexigram.tasks.config._source import (
    KeyPath,
    Source,
    format_path,
    interpolate,
    join_problems,
    read_source,
)
from lexigram.tasks.config._urls import url_problems
from lexigram.tasks.errors import BackendNotFoundError, ConfigurationError
from lexigram.tasks.plugins import RATE_LIMITERS, RESULT_STORES, PluginGroup
from lexigram.tasks.redact import redact_url
from lexigram.tasks.registry import TaskBackendRegistry
from lexigram.tasks.worker import WorkerSettings

if TYPE_CHECKING:
    from lexigram.tasks.provider import TaskProvider

__all__ = [
    "Component",
    "ConfigKeyError",
    "TasksConfig",
    "WorkerSettings",
    "load_config",
    "provider_from_config",
]

ConfigSource = str | os.PathLike[str] | Mapping[str, Any]

# Keys of the provider that the configuration itself decides.
_FROM_CONFIG_ONLY = frozenset({"queue", "backends", "primary"})


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
            f"{k}={_redact_text(v)!r}" if isinstance(v, str) else f"{k}={v!r}"
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
                f"{self.type!r}: {_redact_text(str(exc))}"
            ) from exc


@dataclass(frozen=True, slots=True)
class TasksConfig:
    """A validated ``tasks:`` section. :meth:`create_provider` builds the provider."""

    origin: str
    backends: dict[str, Component]
    primary: str
    #: True for the ``tasks.backend`` form (one backend, named ``default``).
    single: bool
    worker: WorkerSettings
    result_store: Component | None
    result_ttl: float | None
    dead_letter: Component | None
    global_rate_limit: str | None
    trace_links_only: bool
    environment: str | None
    strict: bool
    max_job_bytes: int | None = None
    rate_limiter: Component | None = None

    def provider_kwargs(self, tracer_provider: Any = None) -> dict[str, Any]:
        """The ``TaskProvider`` keyword arguments this configuration gives (backends created).

        ``tracer_provider`` also goes to the dead letter queue, which traces replays.
        """
        kwargs: dict[str, Any] = {"settings": self.worker}
        if self.single:
            kwargs["queue"] = self.backends[self.primary].create()
        else:
            kwargs["backends"] = {name: c.create() for name, c in self.backends.items()}
            kwargs["primary"] = self.primary
        if self.result_store is not None:
            kwargs["result_store"] = self.result_store.create()
        if self.result_ttl is not None:
            kwargs["result_ttl"] = self.result_ttl
        if self.dead_letter is not None:
            extra = {"tracer_provider": tracer_provider} if tracer_provider is not None else {}
            kwargs["dead_letter"] = self.dead_letter.create(**extra)
        if self.global_rate_limit is not None:
            kwargs["global_rate_limit"] = self.global_rate_limit
        if self.rate_limiter is not None:
            kwargs["rate_limiter"] = self.rate_limiter.create()
        kwargs["trace_links_only"] = self.trace_links_only
        kwargs["environment"] = self.environment
        kwargs["strict"] = self.strict
        if self.max_job_bytes is not None:
            kwargs["max_job_bytes"] = self.max_job_bytes
        return kwargs

    def create_provider(self, **overrides: Any) -> TaskProvider:
        """A new :class:`TaskProvider`; ``overrides`` are ``TaskProvider`` keywords
        (e.g. ``tracer_provider=``, ``worker_count=``) that win over the file."""
        from lexigram.tasks.provider import TaskProvider

        fixed = _FROM_CONFIG_ONLY.intersection(overrides)
        if fixed:
            raise TypeError(
                f"{', '.join(sorted(fixed))} come(s) from the configuration and cannot be "
                "overridden; build the TaskProvider directly instead"
            )
        kwargs = self.provider_kwargs(overrides.get("tracer_provider"))
        kwargs.update(overrides)
        return TaskProvider(**kwargs)


def load_config(
    source: ConfigSource,
    *,
    env: Mapping[str, str] | None = None,
    registry: TaskBackendRegistry | None = None,
) -> TasksConfig:
    """Read and validate a configuration file (or mapping) without creating anything.

    ``env`` replaces ``os.environ`` for ``${VAR}`` interpolation; ``registry``
    replaces the default backend registry. Every problem found is reported in
    one :class:`~lexigram.tasks.ConfigurationError` (its ``problems`` one line
    each, naming the file, line and key); it is a
    :class:`~lexigram.tasks.BackendNotFoundError` when a backend type is unknown.
    """
    doc = read_source(source)
    if not isinstance(doc.data, Mapping):
        raise ConfigurationError(
            f"{doc.origin}: the configuration must be a mapping with a 'tasks' key, "
            f"not {type(doc.data).__name__}"
        )
    if "tasks" not in doc.data:
        raise ConfigurationError(
            f"{doc.origin}: missing key 'tasks' (the task configuration lives under a "
            "top-level 'tasks:' key)"
        )
    interpolate(doc, os.environ if env is None else env)
    registry = registry or TaskBackendRegistry.default()
    report = _Report()
    try:
        tasks = ConfigDocument.model_validate(doc.data).tasks
    except pydantic.ValidationError as exc:
        # Report the components' own key errors in the same pass.
        report.problems += _describe(doc, (), doc.data, exc, SECTION_KEYS)
        _check_raw_components(doc, registry, report)
        raise report.error() from None
    return _build(doc, tasks, registry, report)


def provider_from_config(source: ConfigSource, **overrides: Any) -> TaskProvider:
    """``TaskProvider.from_config``: load ``source`` and build the provider."""
    return load_config(source).create_provider(**overrides)


# -- building ------------------------------------------------------------------

#: ``tasks:`` keys holding a ``type:`` component, and the plugin group of their types.
_COMPONENT_GROUPS: dict[str, PluginGroup] = {
    "result_store": RESULT_STORES,
    "rate_limiter": RATE_LIMITERS,
}


@dataclass(slots=True)
class _Report:
    """The problems found so far, all raised together at the end."""

    problems: list[str] = field(default_factory=list)
    unknown_backend: bool = False

    def error(self) -> ConfigurationError:
        problems = sorted(self.problems, key=_line_of)
        kind = BackendNotFoundError if self.unknown_backend else ConfigurationError
        return kind(join_problems(problems), problems=problems)

    def raise_if_any(self) -> None:
        if self.problems:
            raise self.error()


def _build(
    doc: Source, tasks: TasksSection, registry: TaskBackendRegistry, report: _Report
) -> TasksConfig:
    has_one, has_many = tasks.backend is not None, tasks.backends is not None
    if has_one == has_many:
        report.problems.append(
            doc.error(
                ("tasks",),
                "give either 'backend' (one backend) or 'backends' (a list with name/primary)"
                + (", not both" if has_one else ""),
            )
        )
    backends: dict[str, Component] = {}
    primary = "default"
    if tasks.backend is not None and not has_many:
        section: ComponentSection = tasks.backend
        backend = _backend(doc, ("tasks", "backend"), section, registry, report)
        if backend is not None:
            backends[primary] = backend
    elif tasks.backends is not None and not has_one:
        primary = _check_names(doc, tasks.backends, report)
        for index, item in enumerate(tasks.backends):
            backend = _backend(doc, ("tasks", "backends", index), item, registry, report)
            if backend is not None:
                backends[item.name] = backend
    result_store = _component(
        doc, ("tasks", "result_store"), tasks.result_store, RESULT_STORES, report
    )
    rate_limiter = _component(
        doc, ("tasks", "rate_limiter"), tasks.rate_limiter, RATE_LIMITERS, report
    )
    dead_letter = _dead_letter(doc, ("tasks", "dead_letter"), tasks.dead_letter, report)
    report.raise_if_any()
    return TasksConfig(
        origin=doc.origin,
        backends=backends,
        primary=primary,
        single=tasks.backend is not None,
        worker=tasks.worker,
        result_store=result_store,
        result_ttl=tasks.result_ttl,
        dead_letter=dead_letter,
        global_rate_limit=tasks.global_rate_limit,
        trace_links_only=tasks.trace_links_only,
        environment=tasks.environment,
        strict=tasks.strict,
        max_job_bytes=tasks.max_job_bytes,
        rate_limiter=rate_limiter,
    )


def _check_names(doc: Source, items: list[NamedBackendSection], report: _Report) -> str:
    seen: set[str] = set()
    for index, item in enumerate(items):
        if item.name in seen:
            report.problems.append(
                doc.error(("tasks", "backends", index, "name"), f"duplicate name {item.name!r}")
            )
        seen.add(item.name)
    primaries = [i for i, item in enumerate(items) if item.primary]
    if len(primaries) > 1:
        names = ", ".join(repr(items[i].name) for i in primaries)
        report.problems.append(
            doc.error(
                ("tasks", "backends", primaries[1], "primary"),
                f"only one backend can be primary (marked: {names})",
            )
        )
    return items[primaries[0]].name if primaries else items[0].name


def _check_raw_components(doc: Source, registry: TaskBackendRegistry, report: _Report) -> None:
    """Key errors of the component sections of a document that failed validation elsewhere."""
    tasks = doc.data.get("tasks")
    if not isinstance(tasks, Mapping):
        return
    sections: list[tuple[KeyPath, Any]] = [(("tasks", "backend"), tasks.get("backend"))]
    if isinstance(tasks.get("backends"), list):
        sections += [(("tasks", "backends", i), b) for i, b in enumerate(tasks["backends"])]
    for key in _COMPONENT_GROUPS:
        sections.append((("tasks", key), tasks.get(key)))
    for path, raw in sections:
        if not isinstance(raw, Mapping):
            continue
        options = {k: v for k, v in raw.items() if len(path) == 2 or k not in ("name", "primary")}
        try:
            section = ComponentSection.model_validate(options)
        except pydantic.ValidationError:
            continue  # already reported
        if path[-1] in _COMPONENT_GROUPS:
            _component(doc, path, section, _COMPONENT_GROUPS[str(path[-1])], report)
        else:
            _backend(doc, path, section, registry, report)
    dead_letter = tasks.get("dead_letter")
    if isinstance(dead_letter, Mapping):
        _dead_letter(doc, ("tasks", "dead_letter"), dict(dead_letter), report)


def _line_of(problem: str) -> int:
    where = problem.split(": ", 1)[0]
    line = where.rpartition(":")[2]
    return int(line) if line.isdigit() else 0


def _backend(
    doc: Source,
    path: KeyPath,
    section: ComponentSection,
    registry: TaskBackendRegistry,
    report: _Report,
) -> Component | None:
    try:
        factory = resolve_backend(registry, section.type)
    except BackendNotFoundError as exc:
        report.problems.append(doc.error((*path, "type"), str(exc)))
        report.unknown_backend = True
        return None
    return _checked(doc, path, section, factory, "backend", report)


def _component(
    doc: Source,
    path: KeyPath,
    section: ComponentSection | None,
    group: PluginGroup,
    report: _Report,
) -> Component | None:
    if section is None:
        return None
    try:
        factory = resolve_component(group, section.type)
    except ConfigurationError as exc:
        report.problems.append(doc.error((*path, "type"), str(exc)))
        return None
    return _checked(doc, path, section, factory, group.label.removesuffix(" type"), report)


def _dead_letter(
    doc: Source, path: KeyPath, section: dict[str, Any] | None, report: _Report
) -> Component | None:
    if section is None:
        return None
    try:
        factory = resolve_section(str(path[-1]), section)
    except ConfigKeyError as exc:  # the plugin names the key; report it at that key's line
        report.problems.append(doc.error((*path, *exc.key), exc.reason))
        return None
    except (ConfigurationError, ValueError, TypeError) as exc:
        report.problems.append(doc.error(path, _redact_text(str(exc))))
        return None
    return Component(
        type=str(path[-1]),
        factory=factory,
        options={},
        where=doc.where(path),
        key=format_path(path),
        label="dead letter queue",
    )


def _checked(
    doc: Source,
    path: KeyPath,
    section: ComponentSection,
    factory: Callable[..., Any],
    label: str,
    report: _Report,
) -> Component | None:
    validator = OptionsValidator(factory)
    options = section.options()
    try:
        options = validator.validate(options)
    except pydantic.ValidationError as exc:
        hints: dict[tuple[str, ...], list[str]] = {}
        if not validator.open:
            hints[()] = validator.accepted
        report.problems += _describe(doc, path, options, exc, hints, section.type)
        return None
    bad_urls = url_problems(label, section.type, options)
    for key, message in bad_urls:
        report.problems.append(doc.error((*path, key), message))
    if bad_urls:
        return None
    return Component(
        type=section.type,
        factory=factory,
        options=options,
        where=doc.where(path),
        key=format_path(path),
        label=label,
    )


# -- messages ------------------------------------------------------------------

#: pydantic's error types for a key that is not accepted (models, dataclasses).
_UNKNOWN_KEY = ("extra_forbidden", "unexpected_keyword_argument")


def _describe(
    doc: Source,
    base: KeyPath,
    data: Any,
    exc: pydantic.ValidationError,
    accepted: Mapping[tuple[str, ...], list[str]],
    component_type: str | None = None,
) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = _key_loc(data, error["loc"], error["type"])
        path = (*base, *loc)
        problems.append(doc.error(path, _explain(error, path, loc, accepted, component_type)))
    return problems


def _key_loc(data: Any, loc: tuple[int | str, ...], kind: str) -> KeyPath:
    """The part of pydantic's ``loc`` that names keys of the document.

    pydantic appends union members and validator names (``int``,
    ``function-after[...]``) to ``loc``; they are not keys, so the path is
    cut where the document has no such key, except for the key that is
    missing or unknown itself.
    """
    path: list[str | int] = []
    current = data
    for index, part in enumerate(loc):
        in_mapping = isinstance(current, Mapping) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if in_mapping or in_list:
            current = current[part]
        else:
            if index == len(loc) - 1 and kind in ("missing", *_UNKNOWN_KEY):
                path.append(part)
            break
        path.append(part)
    return tuple(path)


def _explain(
    error: Any,
    path: KeyPath,
    loc: KeyPath,
    accepted: Mapping[tuple[str, ...], list[str]],
    component_type: str | None,
) -> str:
    kind = error["type"]
    if kind in _UNKNOWN_KEY:
        parent = tuple(str(p) for p in path[:-1] if isinstance(p, str))
        keys = accepted.get(tuple(str(p) for p in loc[:-1]), accepted.get(parent, []))
        return _unknown_key(str(path[-1]), keys, path, component_type)
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    if not isinstance(error.get("input"), dict | list):
        message += f" (got {_show(error.get('input'))})"
    return message


def _unknown_key(key: str, accepted: list[str], path: KeyPath, component_type: str | None) -> str:
    message = "unknown key"
    if component_type is not None:
        message += f" for type {component_type!r}"
    if key in WorkerSettings.names() and path[:-1] != ("tasks", "worker"):
        return f"{message}; worker settings go under tasks.worker ({key} there)"
    if key == "worker" and path[:1] == ("tasks",):
        return f"{message}; worker settings go under tasks.worker, beside the backend"
    close = difflib.get_close_matches(key, accepted, n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    if accepted:
        message += f" (accepted: {', '.join(accepted)})"
    return message


def _show(value: Any) -> str:
    text = repr(value)
    if isinstance(value, str):
        text = repr(_redact_text(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _redact_text(text: str) -> str:
    return " ".join(redact_url(word) if "://" in word else word for word in text.split(" "))
