"""Errors of the scheduler; all derive from lexigram-tasks' own error classes."""

from __future__ import annotations

from lexigram.tasks.errors import ConfigurationError, TaskError


class InvalidScheduleError(ConfigurationError, ValueError):
    """A schedule is wrong at definition time: bad cron, unknown timezone,
    no handler, arguments that do not fit the task, ..."""


class TemplateNotFoundError(TaskError, LookupError):
    """No schedule template has the given name."""


class TemplateExistsError(TaskError, ValueError):
    """A schedule template with that name already exists."""


class ReadOnlyTemplateError(TaskError, ValueError):
    """The template is defined in code; change the code (or pause it) instead."""
