"""The templates one scheduler knows: code templates taken from the registry (their
functions registered as tasks), runtime templates read from the store, and the
checks that say whether this scheduler can fire a template (handler, backend,
capabilities)."""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from lexigram.tasks.protocol import Capability, TaskQueueProtocol
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.scheduler.errors import InvalidScheduleError
from lexigram.tasks.scheduler.registry import ScheduleRegistry, handler_name
from lexigram.tasks.scheduler.store import StoreSnapshot
from lexigram.tasks.scheduler.template import ScheduleTemplate
from lexigram.tasks.task import Task

logger = logging.getLogger("lexigram.tasks.scheduler")


class KnownTemplates:
    """The code and runtime templates of one scheduler's provider."""

    def __init__(self, provider: TaskProvider, registry: ScheduleRegistry) -> None:
        self.provider = provider
        self.registry = registry
        #: Code templates by name, as of the registry's ``version`` last synced.
        self.code: dict[str, ScheduleTemplate] = {}
        self._code_version = -1
        # name -> (the stored document as JSON, its template or None if invalid)
        self._runtime_cache: dict[str, tuple[str, ScheduleTemplate | None]] = {}
        self._warned: set[str] = set()

    # -- code templates ---------------------------------------------------------

    def sync(self) -> None:
        """Take up ``@scheduled`` templates defined since the last call."""
        if self._code_version == self.registry.version:
            return
        code: dict[str, ScheduleTemplate] = {}
        for entry in self.registry:
            task_name = self._register_handler(entry.handler, entry.template.name)
            template = entry.template
            if template.task != task_name:
                template = replace(template, task=task_name)
            self.check_route(template)
            code[template.name] = template
        self.code = code
        self._code_version = self.registry.version

    def _register_handler(self, handler: Callable[..., Any], template: str) -> str:
        tasks = self.provider.tasks
        if isinstance(handler, Task):
            if tasks.get(handler.name) is not handler:
                raise InvalidScheduleError(
                    f"schedule {template!r}: task {handler.name!r} belongs to another provider"
                )
            return handler.name
        for task in tasks.values():
            if task.fn is handler:
                return task.name
        name = handler_name(handler)
        if name in tasks:
            raise InvalidScheduleError(
                f"schedule {template!r}: a different function is already registered "
                f"as task {name!r}"
            )
        self.provider.task(name=name)(handler)
        return name

    # -- routing and checks -----------------------------------------------------

    def queue_for(self, template: ScheduleTemplate) -> TaskQueueProtocol:
        """The backend a template's jobs go to (its own, its task's, else the primary)."""
        task = self.provider.tasks.get(template.task)
        backend = template.backend or (task.backend if task is not None else None)
        backend = backend or self.provider.primary
        if backend not in self.provider.backends:
            raise InvalidScheduleError(
                f"schedule {template.name!r}: backend {backend!r} is not configured "
                f"(backends: {', '.join(self.provider.backends)})"
            )
        return self.provider.backends[backend]

    def check_route(self, template: ScheduleTemplate) -> None:
        """Raise if the template's backend is unknown or lacks a capability it needs."""
        queue = self.queue_for(template)
        needs = [
            (template.jitter > 0, Capability.DELAY, "jitter"),
            (bool(template.priority), Capability.PRIORITY, "priority"),
        ]
        for wanted, capability, option in needs:
            if wanted and capability not in queue.capabilities:
                raise InvalidScheduleError(
                    f"schedule {template.name!r}: {option} needs a backend with the "
                    f"{capability.value!r} capability, which {type(queue).__name__} "
                    "does not declare"
                )

    def check_handler(self, template: ScheduleTemplate) -> None:
        """Raise if the template's task is not registered (strict providers only)."""
        if template.task in self.provider.tasks or not self.provider.strict:
            return
        known = ", ".join(sorted(self.provider.tasks)) or "none"
        raise InvalidScheduleError(
            f"schedule {template.name!r} has no handler: no task named {template.task!r} is "
            f"registered with the provider (registered: {known})"
        )

    def not_found(self, name: str) -> str:
        """The message for a template name that is neither in code nor in the store."""
        code = ", ".join(sorted(self.code)) or "none"
        return f"no schedule named {name!r} (code templates: {code})"

    # -- code and runtime together ------------------------------------------------

    def listed(self, snapshot: StoreSnapshot) -> builtins.list[ScheduleTemplate]:
        """Code templates, then every valid runtime template (for listings)."""
        templates = dict(self.code)
        for name, doc in snapshot.templates.items():
            if name not in templates:
                template = self._runtime(name, doc)
                if template is not None:
                    templates[name] = template
        return list(templates.values())

    def fireable(self, snapshot: StoreSnapshot) -> builtins.list[ScheduleTemplate]:
        """Code templates, then the runtime templates this scheduler can fire."""
        templates = dict(self.code)
        for gone in self._runtime_cache.keys() - snapshot.templates.keys():
            del self._runtime_cache[gone]
        for name, doc in snapshot.templates.items():
            if name in templates:
                continue  # the code's definition wins over a stale runtime copy
            template = self._runtime(name, doc)
            if template is not None and self._can_fire(template):
                templates[name] = template
        return list(templates.values())

    def _runtime(self, name: str, doc: Mapping[str, Any]) -> ScheduleTemplate | None:
        key = json.dumps(doc, sort_keys=True)
        cached = self._runtime_cache.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        template: ScheduleTemplate | None
        try:
            template = ScheduleTemplate.from_dict({**doc, "origin": "runtime"})
        except (InvalidScheduleError, TypeError) as exc:
            logger.error(
                "runtime schedule %r in the store is invalid and is ignored: %s", name, exc
            )
            template = None
        self._runtime_cache[name] = (key, template)
        return template

    def _can_fire(self, template: ScheduleTemplate) -> bool:
        try:
            self.check_handler(template)
            self.check_route(template)
        except InvalidScheduleError as exc:
            if template.name not in self._warned:
                self._warned.add(template.name)
                logger.warning("%s; this scheduler leaves it to schedulers that know it", exc)
            return False
        self._warned.discard(template.name)
        return True
