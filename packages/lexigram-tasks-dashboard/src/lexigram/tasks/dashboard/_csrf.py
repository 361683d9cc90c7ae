"""Cross-site request forgery protection: a random token in a cookie and in every form.

Double submit: the page's forms carry the token of the browser's cookie, and
a POST is refused unless its form field equals its cookie. Another site can
make the browser send the cookie but can neither read it nor guess it, so it
cannot fill in the field. The cookie is ``SameSite=Strict`` and ``HttpOnly``.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "lexigram_dashboard_csrf"
FIELD = "csrf_token"


def token_for(request: Request) -> tuple[str, bool]:
    """The request's token, and whether it is new (then the response must set it)."""
    existing = request.cookies.get(COOKIE)
    if existing and len(existing) >= 32:
        return existing, False
    return secrets.token_urlsafe(32), True


def set_cookie(response: Response, token: str, path: str) -> None:
    response.set_cookie(
        COOKIE, token, path=path or "/", httponly=True, samesite="strict", max_age=12 * 3600
    )


def valid(request: Request, submitted: object) -> bool:
    """True when the form's token is the cookie's."""
    cookie = request.cookies.get(COOKIE)
    if not cookie or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())
