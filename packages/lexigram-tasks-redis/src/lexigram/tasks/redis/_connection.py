"""Opening redis-py clients with errors that never show a password."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from lexigram.tasks.errors import BackendConnectionError, ConfigurationError
from lexigram.tasks.redact import redact_text, redact_url
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: A command that fails on a dropped connection (CLIENT KILL, a server restart,
#: a network blip) reconnects and is sent again this many times.
RETRIES = 3

#: The URL schemes redis-py connects with.
SCHEMES = ("redis", "rediss", "unix")


def validate_url(url: str) -> None:
    """Raise :class:`ConfigurationError` unless ``url`` is a redis://, rediss:// or unix:// URL.

    Only the scheme is checked (nothing is contacted), so a configuration
    loader can call it before connecting; the message never shows a password.
    """
    scheme, separator, _ = url.partition("://")
    scheme = scheme.lower() if separator else ""
    if scheme not in SCHEMES:
        found = f"scheme {scheme!r}" if scheme else "no scheme"
        raise ConfigurationError(
            f"{redact_url(url)!r} is not a Redis URL ({found}): it must start with "
            "redis://, rediss:// (TLS) or unix:// (a socket)"
        )


def client_defaults() -> dict[str, Any]:
    """The redis-py options lexigram's clients use unless told otherwise."""
    return {
        # from_url leaves connections with no retries at all; every lexigram
        # operation is safe to resend (idempotent, or guarded by lease tokens).
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), RETRIES),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        # No read/write timeout: dequeue blocks in BLPOP for as long as it was
        # asked to wait, and on Python 3.11 redis-py's write timeout goes
        # through asyncio.wait_for, which can swallow a task's cancellation
        # (CPython gh-86296) and hang a worker's shutdown. Dead peers are
        # found by TCP keepalive instead.
        "socket_timeout": None,
        "socket_keepalive": True,
        "socket_keepalive_options": _keepalive_options(),
    }


def _keepalive_options() -> dict[int, int]:
    # Probe after 15 s idle, every 5 s, give up after 4 misses (where the OS allows).
    wanted = {"TCP_KEEPIDLE": 15, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 4}
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


async def open_client(redis_url: str, *, purpose: str = "", **options: Any) -> Redis:
    """A connected client for ``redis_url``, checked with a PING.

    Raises :class:`BackendConnectionError` naming the (redacted) URL, and
    ``purpose`` when given (e.g. ``"the dead letter queue"``), when the URL is
    invalid or the server cannot be reached or refuses the credentials.
    A dropped connection is re-established and the command resent
    (:data:`RETRIES` times). ``options`` go to ``Redis.from_url``.
    """
    where = f"{redact_url(redis_url)} for {purpose}" if purpose else redact_url(redis_url)
    secret = _password(redis_url)
    try:
        client = Redis.from_url(redis_url, **{**client_defaults(), **options})
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


@contextlib.contextmanager
def reported(redis_url: str) -> Iterator[None]:
    """Turn redis-py's connection and timeout errors into :class:`BackendConnectionError`.

    They are raised once redis-py's own retries (:data:`RETRIES`) are spent;
    the message names the (redacted) URL.
    """
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        message = redact_text(str(exc), _password(redis_url)) or type(exc).__name__
        raise BackendConnectionError(
            f"Redis at {redact_url(redis_url)} did not answer: {message}"
        ) from None
