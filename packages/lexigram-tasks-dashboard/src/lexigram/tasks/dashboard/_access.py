"""Who may see and who may act: the ``auth`` hook and the ``allow_actions`` switch.

The hook is the application's: it gets each request (and, if it takes a
second parameter, whether the request only looks or also changes something)
and answers yes or no, possibly after awaiting a session lookup. It may
also raise Starlette's ``HTTPException`` itself, e.g. a 401 with a
``WWW-Authenticate`` header so that a browser asks for a password.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from starlette.requests import Request


class Access(enum.StrEnum):
    """What a request wants: to look at pages, or to change something."""

    SEE = "see"
    ACT = "act"


#: ``auth(request)`` or ``auth(request, access)``, returning (or awaiting to) a bool.
AuthHook: TypeAlias = Callable[..., bool | Awaitable[bool]]


class Gate:
    """Answers "may this request see / act?" from ``allow_actions`` and the hook."""

    def __init__(self, auth: AuthHook | None, allow_actions: bool) -> None:
        if auth is not None and not callable(auth):
            raise TypeError(f"auth must be a callable taking the request, got {auth!r}")
        self._auth = auth
        self._wants_access = auth is not None and _takes_two_arguments(auth)
        self.allow_actions = allow_actions

    async def allows(self, request: Request, access: Access) -> bool:
        if access is Access.ACT and not self.allow_actions:
            return False
        if self._auth is None:
            return True
        answer: Any = self._auth(request, access) if self._wants_access else self._auth(request)
        if inspect.isawaitable(answer):
            answer = await answer
        if not isinstance(answer, bool):
            raise TypeError(f"the dashboard's auth hook returned {answer!r}, not True or False")
        return answer


def _takes_two_arguments(hook: AuthHook) -> bool:
    try:
        parameters = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in positional)
