"""Keeps pytest out of the template itself (template-only file: do not copy).

The template's tests import ``lexigram.tasks.REPLACE_ME``, which exists only
once the template is instantiated. In a copy this file does nothing, and
packages/lexigram-tasks-core/tests/test_namespace_install.py flags it.
"""

from pathlib import Path

collect_ignore_glob = ["*"] if Path(__file__).parent.name == "_template" else []
