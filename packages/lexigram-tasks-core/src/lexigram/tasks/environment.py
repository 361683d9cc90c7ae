"""Which environment the process runs in, for the MemoryTaskQueue warning.

Read from ``LEXIGRAM_ENV``, else ``ENVIRONMENT``; when neither is set the
process counts as development. Values meaning development or testing:
``development``, ``dev``, ``local``, ``test``, ``testing`` (any case).
"""

from __future__ import annotations

import os

DEVELOPMENT_NAMES = frozenset({"development", "dev", "local", "test", "testing"})
ENVIRONMENT_VARIABLES = ("LEXIGRAM_ENV", "ENVIRONMENT")


def current_environment(explicit: str | None = None) -> str:
    """The environment name: ``explicit`` if given, else from the variables above."""
    if explicit:
        return explicit
    for name in ENVIRONMENT_VARIABLES:
        value = os.environ.get(name)
        if value:
            return value
    return "development"


def is_development(explicit: str | None = None) -> bool:
    """True for development and testing environments."""
    return current_environment(explicit).strip().lower() in DEVELOPMENT_NAMES
