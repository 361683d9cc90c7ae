"""Keep credentials out of logs, errors and CLI output."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_DSN_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
# A query parameter carrying a secret (?password=..., ?sentinel_password=...), up
# to the next parameter; punctuation ending the URL belongs to the text around it.
_QUERY_PASSWORD = re.compile(r"([?&][^=&#]*password=)[^&#]*?(?=[.,:;]*$|[&#])", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Replace the password in a URL (and any ``...password=`` query value) or
    key=value DSN with ``***``.

    >>> redact_url("redis://:s3cret@localhost:6379/0")
    'redis://:***@localhost:6379/0'
    >>> redact_url("redis+sentinel://s1/mymaster?sentinel_password=s3cret")
    'redis+sentinel://s1/mymaster?sentinel_password=***'
    """
    if "://" not in url:
        return _DSN_PASSWORD.sub(r"\1***", url)
    url = _QUERY_PASSWORD.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    # Everything after the last "@" is host and port, kept as written (a
    # malformed port must not turn redaction into an error).
    netloc = f"{user}:***@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_urls(text: str) -> str:
    """Every URL in ``text`` with its password replaced by ``***``.

    >>> redact_urls("cannot connect to redis://:s3cret@cache:6379/0: refused")
    'cannot connect to redis://:***@cache:6379/0: refused'
    """
    return _URL.sub(lambda match: redact_url(match.group(0)), text)


def redact_text(text: str, *secrets: str | None) -> str:
    """Remove every given secret (e.g. a password) from an error message."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
