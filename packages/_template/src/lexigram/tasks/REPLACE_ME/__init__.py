"""lexigram.tasks.REPLACE_ME: REPLACE_ME_SUMMARY"""

from __future__ import annotations

from lexigram.tasks.REPLACE_ME._version import __version__

__all__ = ["__version__"]
