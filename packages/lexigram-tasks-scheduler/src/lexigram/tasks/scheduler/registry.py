"""``@scheduled``: templates defined in code, collected until a scheduler takes them.

``@scheduled`` needs no provider: it records the function and its schedule
in a module-level :class:`ScheduleRegistry`. A :class:`TaskScheduler` built
on a provider later registers each such function as a task of that provider
(unless it already is one) and fires its ticks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from lexigram.tasks.scheduler.errors import InvalidScheduleError
from lexigram.tasks.scheduler.template import ScheduleOptions, ScheduleTemplate
from lexigram.tasks.task import Task

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class CodeTemplate:
    """A template from ``@scheduled`` and the handler it schedules."""

    template: ScheduleTemplate
    handler: Callable[..., Any]


def handler_name(handler: Callable[..., Any]) -> str:
    """The task name a provider gives ``handler`` by default (``module.qualname``)."""
    if isinstance(handler, Task):
        return handler.name
    return f"{handler.__module__}.{handler.__qualname__}"


class ScheduleRegistry:
    """Collects code-defined templates. ``scheduled`` uses the process-wide
    :data:`default_registry`; tests can use their own instance."""

    def __init__(self) -> None:
        self._entries: dict[str, CodeTemplate] = {}
        #: Bumped on every change, so schedulers notice templates defined later.
        self.version = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[CodeTemplate]:
        return iter(list(self._entries.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> CodeTemplate | None:
        return self._entries.get(name)

    def clear(self) -> None:
        self._entries.clear()
        self.version += 1

    def add(self, template: ScheduleTemplate, handler: Callable[..., Any]) -> None:
        """Register a code template for ``handler``.

        A second template under the same name raises, unless it schedules a
        function of the same ``module.qualname`` (the module was executed again).
        """
        existing = self._entries.get(template.name)
        if existing is not None and handler_name(existing.handler) != handler_name(handler):
            raise InvalidScheduleError(
                f"a schedule named {template.name!r} already exists (for "
                f"{handler_name(existing.handler)}); give this one another name=..."
            )
        self._entries[template.name] = CodeTemplate(template, handler)
        self.version += 1

    def scheduled(
        self,
        cron: str | None = None,
        *,
        name: str | None = None,
        options: ScheduleOptions | None = None,
        **keywords: Any,
    ) -> Callable[[F], F]:
        """See :func:`scheduled`."""
        if callable(cron):
            raise InvalidScheduleError(
                f'@scheduled needs a cron expression: write @scheduled(cron="...") '
                f"above {handler_name(cron)}"
            )
        if cron is None:
            raise InvalidScheduleError('@scheduled needs a cron expression: cron="0 */6 * * *"')
        chosen = ScheduleOptions.merged(options, keywords, "scheduled")

        def decorate(handler: F) -> F:
            if not callable(handler):
                raise InvalidScheduleError(
                    f"@scheduled must decorate a function or a task, got {handler!r}"
                )
            task_name = handler_name(handler)
            check_arguments(handler, chosen.args, dict(chosen.kwargs), name or task_name)
            described = replace(
                chosen, description=chosen.description or _first_line(handler.__doc__)
            )
            template = ScheduleTemplate.build(
                name or task_name, task_name, cron, described, origin="code"
            )
            self.add(template, handler)
            return handler

        return decorate


def check_arguments(
    handler: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], name: str
) -> None:
    """Raise :class:`InvalidScheduleError` if the arguments do not fit ``handler``."""
    function = handler.fn if isinstance(handler, Task) else handler
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # builtins without a signature: nothing to check
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidScheduleError(
            f"schedule {name!r}: args/kwargs do not fit {handler_name(handler)}{signature}: {exc}"
        ) from None


def _first_line(doc: str | None) -> str | None:
    if not doc:
        return None
    line = doc.strip().splitlines()[0].strip()
    return line or None


#: The registry ``@scheduled`` writes to and ``TaskScheduler`` reads by default.
default_registry = ScheduleRegistry()


def scheduled(
    cron: str | None = None,
    *,
    name: str | None = None,
    options: ScheduleOptions | None = None,
    **keywords: Any,
) -> Callable[[F], F]:
    """Run the decorated function (``async def`` or plain) on a cron schedule.

    ``@scheduled(cron="0 */6 * * *")`` records a template in
    :data:`default_registry`; the function itself is returned unchanged. A
    :class:`TaskScheduler` on a provider registers it as a task (named
    ``module.function`` unless it is already a task) and enqueues one job
    per tick. Stack it above ``@provider.task(...)`` to choose task options.

    - ``cron``: 5 fields, 6 with seconds last, or ``@daily`` & co.
    - ``name``: template name (default: the task name); needed when one
      function has several schedules.
    - ``options=ScheduleOptions(...)`` and/or its fields as keywords
      (keywords win): ``timezone`` (IANA name, default UTC), ``args``/
      ``kwargs`` (the job's arguments, JSON values), ``backend``,
      ``priority``, ``jitter`` (random 0..jitter seconds of delay),
      ``catch_up`` (``"skip"``, ``"once"`` (default) or ``"all"``, at most
      ``catch_up_limit``; see :class:`CatchUp`), ``misfire_grace`` (how late
      a tick may fire under ``"skip"``) and ``description`` (default: the
      first line of the docstring).

    Invalid cron expressions, unknown timezones and arguments that do not
    fit the function raise :class:`InvalidScheduleError` right here; an
    unknown keyword raises ``TypeError``.
    """
    return default_registry.scheduled(cron, name=name, options=options, **keywords)
