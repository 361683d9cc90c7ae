"""lexigram.tasks.dashboard: A web dashboard for lexigram-tasks: queues, jobs, failures, schedules and workers."""

from __future__ import annotations

from lexigram.tasks.dashboard._version import __version__

__all__ = ["__version__"]
