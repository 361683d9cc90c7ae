"""Loading ``lexigram.yaml``: the ``tasks:`` section into a :class:`TaskProvider`.

``TaskProvider.from_config(path_or_mapping)`` is the usual entry point;
:func:`load_config` validates without building anything, for tools. See
``docs/configuration.md`` for every key.

Inside: ``_source`` reads the document (lines, ``${VAR}``), ``_models`` is
its shape, ``_components`` resolves ``type:`` names to factories,
``_signature`` and ``_urls`` check their options, ``_build`` assembles the
:class:`TasksConfig` and ``_messages`` words the problems.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pydantic

from lexigram.tasks.config._build import Report, TasksConfig, build, check_raw_components
from lexigram.tasks.config._components import Component, ConfigKeyError
from lexigram.tasks.config._messages import describe
from lexigram.tasks.config._models import SECTION_KEYS, ConfigDocument
from lexigram.tasks.config._source import interpolate, read_source
from lexigram.tasks.errors import ConfigurationError
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
    report = Report()
    try:
        tasks = ConfigDocument.model_validate(doc.data).tasks
    except pydantic.ValidationError as exc:
        # Report the components' own key errors in the same pass.
        report.problems += describe(doc, (), doc.data, exc, SECTION_KEYS)
        check_raw_components(doc, registry, report)
        raise report.error() from None
    return build(doc, tasks, registry, report)


def provider_from_config(source: ConfigSource, **overrides: Any) -> TaskProvider:
    """``TaskProvider.from_config``: load ``source`` and build the provider."""
    return load_config(source).create_provider(**overrides)
