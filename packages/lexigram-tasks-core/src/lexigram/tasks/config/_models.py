"""The shape of the ``tasks:`` section, as pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lexigram.tasks.ratelimit import Rate
from lexigram.tasks.worker import WorkerSettings


class ComponentSection(BaseModel):
    """A ``type:`` plus the keyword arguments of that type's factory (checked separately)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = Field(min_length=1)

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class NamedBackendSection(ComponentSection):
    """One item of ``tasks.backends``."""

    name: str = Field(min_length=1)
    primary: bool = False


class MetricsSection(BaseModel):
    """``tasks.metrics``: the Prometheus endpoint of ``lexigram-tasks worker``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: TCP port of ``/metrics`` (0: any free one; with several processes, see the docs).
    port: int = Field(ge=0, le=65535)
    #: Address to listen on; the default keeps the endpoint on this machine.
    host: str = Field(default="127.0.0.1", min_length=1)


class TasksSection(BaseModel):
    """The ``tasks:`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: ComponentSection | None = None
    backends: list[NamedBackendSection] | None = Field(default=None, min_length=1)
    #: The one declaration of the worker settings, validated by pydantic.
    worker: WorkerSettings = WorkerSettings()
    result_store: ComponentSection | None = None
    result_ttl: float | None = Field(default=None, gt=0)
    dead_letter: dict[str, Any] | None = None
    global_rate_limit: str | None = None
    rate_limiter: ComponentSection | None = None
    concurrency_limiter: ComponentSection | None = None
    trace_links_only: bool = False
    environment: str | None = None
    strict: bool = True
    max_job_bytes: int | None = Field(default=None, gt=0)
    metrics: MetricsSection | None = None

    @field_validator("global_rate_limit")
    @classmethod
    def _valid_rate(cls, value: str | None) -> str | None:
        if value is not None:
            Rate.parse(value)
        return value


class ConfigDocument(BaseModel):
    """A whole file: ``tasks:`` plus whatever else the application keeps there."""

    model_config = ConfigDict(extra="allow", frozen=True)

    tasks: TasksSection


#: Keys accepted at each fixed place, for "did you mean" hints.
SECTION_KEYS: dict[tuple[str, ...], list[str]] = {
    ("tasks",): list(TasksSection.model_fields),
    ("tasks", "worker"): list(WorkerSettings.names()),
    ("tasks", "metrics"): list(MetricsSection.model_fields),
}
