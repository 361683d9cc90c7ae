"""Exceptions raised by lexigram-tasks. All derive from :class:`TaskError`."""

from __future__ import annotations

from collections.abc import Sequence


class TaskError(Exception):
    """Base class of every lexigram-tasks error."""


class ConfigurationError(TaskError):
    """A configuration value or file is wrong; the message names the key.

    ``problems`` holds one line per problem found (a file with several
    problems reports all of them in one error, its message listing them).
    """

    def __init__(self, *args: object, problems: Sequence[str] = ()) -> None:
        super().__init__(*args)
        self.problems: tuple[str, ...] = tuple(problems) or ((str(self),) if args else ())


class BackendNotFoundError(ConfigurationError):
    """No backend is registered under the requested ``type`` string."""


class BackendConnectionError(TaskError):
    """A backend could not reach its server (the URL in the message is redacted)."""


class CapabilityNotSupportedError(TaskError):
    """The backend does not declare the capability an operation needs."""


class JobSerializationError(TaskError, TypeError):
    """A job's arguments or result cannot be written as JSON."""


class JobTooLargeError(JobSerializationError):
    """A job's encoded size is over ``max_job_bytes``; the message gives both sizes."""


class MalformedJobError(TaskError, ValueError):
    """A message read from a backend is not a valid job."""


class UnknownTaskError(TaskError, LookupError):
    """No task is registered under the given name."""


class TaskArgumentsError(TaskError, TypeError):
    """A job's arguments do not fit its task's signature; the message names both."""


class TaskTimeoutError(TaskError, TimeoutError):
    """A task ran longer than its timeout and was cancelled."""


class WorkerProcessCrashed(TaskError):
    """The child process running a process-executor job died before answering
    (a crash, ``os._exit``); the message names its exit code or signal."""


class ResultTimeoutError(TaskError, TimeoutError):
    """A job's result did not arrive within the time asked for."""


class NoResultStoreError(TaskError):
    """Results were asked for, but no result store is configured."""


class TaskFailedError(TaskError):
    """The job failed; ``error_type`` and ``error_message`` are the task's exception's."""

    def __init__(self, job_id: str, error_type: str, error_message: str) -> None:
        super().__init__(f"job {job_id} failed: {error_type}: {error_message}")
        self.job_id = job_id
        self.error_type = error_type
        self.error_message = error_message


class JobCancelledError(TaskError):
    """The job was cancelled (before it started, or while it ran); it has no result."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} was cancelled")
        self.job_id = job_id
