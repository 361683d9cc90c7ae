from __future__ import annotations

from importlib.metadata import version

import lexigram.tasks.dashboard


def test_installed_metadata_matches_version_file() -> None:
    # Fails when the editable install is stale (version or entry points changed).
    assert lexigram.tasks.dashboard.__version__ == version("lexigram-tasks-dashboard")
