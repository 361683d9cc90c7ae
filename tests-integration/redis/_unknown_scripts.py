"""Scripts as the server has never loaded them (as after SCRIPT FLUSH or a restart)."""

from __future__ import annotations

import hashlib
import uuid

from lexigram.tasks.redis import _scripts


def never_loaded(script: _scripts.Script) -> _scripts.Script:
    """``script`` with a unique comment: its SHA is one the server does not know."""
    source = f"-- {uuid.uuid4().hex}\n{script.source}"
    return _scripts.Script(script.name, source, hashlib.sha1(source.encode()).hexdigest())
