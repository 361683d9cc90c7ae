"""Exit codes and the one-line error reports of the CLI."""

from __future__ import annotations

from lexigram.tasks.redact import redact_urls

#: The command did what was asked.
EXIT_OK = 0
#: The command ran and failed: a job failed, a result timed out, an unexpected error.
EXIT_FAILURE = 1
#: The command line is wrong: bad option or JSON, unknown task or backend name.
EXIT_USAGE = 2
#: The application cannot be loaded: bad import path, bad configuration file.
EXIT_CONFIG = 3
#: A backend (or result store) could not be reached.
EXIT_UNAVAILABLE = 4


class CLIError(Exception):
    """An error to report as one line, with the exit code to leave with."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


#: Every URL in a text with its password replaced by ``***``.
redact = redact_urls
