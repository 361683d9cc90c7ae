"""From a validated ``tasks:`` section to a :class:`TasksConfig`: every backend and
component resolved and its options checked, all problems reported together."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pydantic

from lexigram.tasks.config._components import (
    Component,
    ConfigKeyError,
    resolve_backend,
    resolve_component,
    resolve_section,
)
from lexigram.tasks.config._messages import describe
from lexigram.tasks.config._models import (
    ComponentSection,
    MetricsSection,
    NamedBackendSection,
    TasksSection,
)
from lexigram.tasks.config._signature import OptionsValidator
from lexigram.tasks.config._source import KeyPath, Source, format_path, join_problems
from lexigram.tasks.config._urls import url_problems
from lexigram.tasks.errors import BackendNotFoundError, ConfigurationError
from lexigram.tasks.plugins import CONCURRENCY_LIMITERS, RATE_LIMITERS, RESULT_STORES, PluginGroup
from lexigram.tasks.redact import redact_urls
from lexigram.tasks.registry import TaskBackendRegistry
from lexigram.tasks.worker import WorkerSettings

if TYPE_CHECKING:
    from lexigram.tasks.provider import TaskProvider

# Keys of the provider that the configuration itself decides.
_FROM_CONFIG_ONLY = frozenset({"queue", "backends", "primary"})


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
    concurrency_limiter: Component | None = None
    #: ``tasks.metrics``: where ``lexigram-tasks worker`` serves Prometheus metrics.
    metrics: MetricsSection | None = None

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
        if self.concurrency_limiter is not None:
            kwargs["concurrency_limiter"] = self.concurrency_limiter.create()
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


#: ``tasks:`` keys holding a ``type:`` component, and the plugin group of their types.
COMPONENT_GROUPS: dict[str, PluginGroup] = {
    "result_store": RESULT_STORES,
    "rate_limiter": RATE_LIMITERS,
    "concurrency_limiter": CONCURRENCY_LIMITERS,
}


@dataclass(slots=True)
class Report:
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


def build(
    doc: Source, tasks: TasksSection, registry: TaskBackendRegistry, report: Report
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
    concurrency_limiter = _component(
        doc,
        ("tasks", "concurrency_limiter"),
        tasks.concurrency_limiter,
        CONCURRENCY_LIMITERS,
        report,
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
        concurrency_limiter=concurrency_limiter,
        metrics=tasks.metrics,
    )


def _check_names(doc: Source, items: list[NamedBackendSection], report: Report) -> str:
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


def check_raw_components(doc: Source, registry: TaskBackendRegistry, report: Report) -> None:
    """Key errors of the component sections of a document that failed validation elsewhere."""
    tasks = doc.data.get("tasks")
    if not isinstance(tasks, Mapping):
        return
    sections: list[tuple[KeyPath, Any]] = [(("tasks", "backend"), tasks.get("backend"))]
    if isinstance(tasks.get("backends"), list):
        sections += [(("tasks", "backends", i), b) for i, b in enumerate(tasks["backends"])]
    for key in COMPONENT_GROUPS:
        sections.append((("tasks", key), tasks.get(key)))
    for path, raw in sections:
        if not isinstance(raw, Mapping):
            continue
        options = {k: v for k, v in raw.items() if len(path) == 2 or k not in ("name", "primary")}
        try:
            section = ComponentSection.model_validate(options)
        except pydantic.ValidationError:
            continue  # already reported
        if path[-1] in COMPONENT_GROUPS:
            _component(doc, path, section, COMPONENT_GROUPS[str(path[-1])], report)
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
    report: Report,
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
    report: Report,
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
    doc: Source, path: KeyPath, section: dict[str, Any] | None, report: Report
) -> Component | None:
    if section is None:
        return None
    try:
        factory = resolve_section(str(path[-1]), section)
    except ConfigKeyError as exc:  # the plugin names the key; report it at that key's line
        report.problems.append(doc.error((*path, *exc.key), exc.reason))
        return None
    except (ConfigurationError, ValueError, TypeError) as exc:
        report.problems.append(doc.error(path, redact_urls(str(exc))))
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
    report: Report,
) -> Component | None:
    validator = OptionsValidator(factory)
    options = section.options()
    try:
        options = validator.validate(options)
    except pydantic.ValidationError as exc:
        hints: dict[tuple[str, ...], list[str]] = {}
        if not validator.open:
            hints[()] = validator.accepted
        report.problems += describe(doc, path, options, exc, hints, section.type)
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
