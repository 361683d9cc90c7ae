"""Option sets declared once as frozen dataclasses, also taken as keywords.

``WorkerSettings``, the DLQ's ``FailureFilter`` and the scheduler's
``ScheduleOptions`` are each accepted as an instance and/or their fields as
keyword arguments; :func:`with_keywords` is how every one of them applies
the keywords.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def with_keywords(base: T, keywords: Mapping[str, Any], owner: str, label: str) -> T:
    """``base`` (a frozen dataclass instance) with the fields in ``keywords`` replaced.

    A name that is not a field raises the ``TypeError`` Python would, naming
    ``owner`` (the function that took the keywords) and listing the ``label``
    fields it accepts. The replaced copy is validated by the dataclass itself.
    """
    names = [f.name for f in dataclasses.fields(base) if f.init]  # type: ignore[arg-type]
    unknown = sorted(set(keywords) - set(names))
    if unknown:
        raise TypeError(
            f"{owner}() got an unexpected keyword argument {unknown[0]!r} "
            f"({label}: {', '.join(names)})"
        )
    return dataclasses.replace(base, **keywords) if keywords else base  # type: ignore[type-var]
