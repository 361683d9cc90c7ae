from __future__ import annotations

from importlib.metadata import version

import lexigram.tasks.REPLACE_ME


def test_installed_metadata_matches_version_file() -> None:
    # Fails when the editable install is stale (version or entry points changed).
    assert lexigram.tasks.REPLACE_ME.__version__ == version("lexigram-tasks-REPLACE_ME")
