"""Opening redis-py clients with errors that never show a password."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

from lexigram.tasks.errors import BackendConnectionError
from lexigram.tasks.redact import redact_text, redact_url


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


async def open_client(redis_url: str, **options: Any) -> Redis:
    """A connected client for ``redis_url``, checked with a PING.

    Raises :class:`BackendConnectionError` naming the (redacted) URL when the
    URL is invalid or the server cannot be reached or refuses the credentials.
    redis-py's default retry policy stays on, so a dropped connection is
    re-established on the next command.
    """
    where = redact_url(redis_url)
    secret = _password(redis_url)
    try:
        client = Redis.from_url(redis_url, **options)
    except (ValueError, TypeError) as exc:
        message = redact_text(str(exc), secret)
        raise BackendConnectionError(f"invalid Redis URL {where}: {message}") from None
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        message = redact_text(str(exc), secret) or type(exc).__name__
        raise BackendConnectionError(f"cannot connect to Redis at {where}: {message}") from None
    return client
