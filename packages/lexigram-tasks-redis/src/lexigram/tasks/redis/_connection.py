"""Opening redis-py clients with errors that never show a password.

Every component of this package, and the DLQ's and the scheduler's Redis
storages, get their clients from :func:`open_client`, so a
``redis+sentinel://`` or ``redis+cluster://`` URL works for all of them alike.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Sequence
from typing import Any

from lexigram.tasks.errors import BackendConnectionError, ConfigurationError
from lexigram.tasks.redact import redact_text
from lexigram.tasks.redis._cluster import (
    CLUSTER_SCHEMES,
    cluster_client,
    is_cluster_url,
    parse_cluster_url,
)
from lexigram.tasks.redis._sentinel import (
    SENTINEL_SCHEMES,
    SentinelAddress,
    is_sentinel_url,
    master_client,
    parse_sentinel_url,
    redact,
    secrets,
    sentinel_url,
    tidy,
)
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ClusterError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: A command that fails on a dropped connection (CLIENT KILL, a server restart,
#: a network blip) reconnects and is sent again this many times.
RETRIES = 3

#: The URL schemes lexigram's Redis clients connect with.
SCHEMES = ("redis", "rediss", "unix", *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)


def validate_url(url: str) -> None:
    """Raise :class:`ConfigurationError` unless ``url`` is a Redis URL lexigram connects with.

    That is redis://, rediss:// (TLS), unix:// (a socket), or
    redis+sentinel:// / rediss+sentinel:// and redis+cluster:// /
    rediss+cluster://, which are read in full (the message names the part
    that is wrong). Nothing is contacted, so a
    configuration loader can call it before connecting; the message never
    shows a password.
    """
    scheme, separator, _ = url.partition("://")
    scheme = scheme.lower() if separator else ""
    if scheme in SENTINEL_SCHEMES:
        parse_sentinel_url(url)
    elif scheme in CLUSTER_SCHEMES:
        parse_cluster_url(url)
    elif scheme not in SCHEMES:
        found = f"scheme {scheme!r}" if scheme else "no scheme"
        raise ConfigurationError(
            f"{redact(url)!r} is not a Redis URL ({found}): it must start with "
            "redis://, rediss:// (TLS), unix:// (a socket), redis+sentinel:// (Sentinel) "
            "or redis+cluster:// (Redis Cluster)"
        )


def resolve_url(
    redis_url: str, sentinels: Sequence[SentinelAddress] | None, service_name: str | None
) -> str:
    """The URL a component connects with: ``redis_url``, or with ``sentinels=`` and
    ``service_name=`` the ``redis+sentinel://`` URL they make (credentials, database
    and TLS taken from ``redis_url``). Checked as :func:`validate_url` does."""
    if sentinels is None and service_name is None:
        validate_url(redis_url)
        return redis_url
    if sentinels is None or service_name is None:
        raise ConfigurationError("sentinels= and service_name= go together: give both")
    url = sentinel_url(sentinels, service_name, base=redis_url)
    validate_url(url)
    return url


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


async def open_client(redis_url: str, *, purpose: str = "", **options: Any) -> Redis:
    """A connected client for ``redis_url``, checked with a PING.

    Raises :class:`BackendConnectionError` naming the (redacted) URL, and
    ``purpose`` when given (e.g. ``"the dead letter queue"``), when the URL is
    invalid or the server cannot be reached or refuses the credentials.
    A dropped connection is re-established and the command resent
    (:data:`RETRIES` times). ``options`` go to ``Redis.from_url``.
    """
    where = f"{redact(redis_url)} for {purpose}" if purpose else redact(redis_url)
    hidden = secrets(redis_url)
    settings = {**client_defaults(), **options}
    try:
        if is_sentinel_url(redis_url):
            client: Redis = master_client(redis_url, settings)
        elif is_cluster_url(redis_url):
            client = cluster_client(redis_url, settings)
        else:
            client = Redis.from_url(redis_url, **settings)
    except (ValueError, TypeError, ConfigurationError) as exc:
        message = redact_text(str(exc), *hidden)
        raise BackendConnectionError(f"invalid Redis URL {where}: {message}") from None
    try:
        await client.ping()
    except (RedisError, RedisClusterException, OSError, TypeError) as exc:
        # TypeError: an option in the URL's query that redis-py's connections do not take.
        await client.aclose()
        message = redact_text(tidy(str(exc)), *hidden) or type(exc).__name__
        raise BackendConnectionError(f"cannot connect to Redis at {where}: {message}") from None
    return client


@contextlib.contextmanager
def reported(redis_url: str) -> Iterator[None]:
    """Turn redis-py's connection and timeout errors into :class:`BackendConnectionError`.

    They are raised once redis-py's own retries (:data:`RETRIES`) are spent;
    the message names the (redacted) URL. So is a master's refusal to write
    while fewer replicas than its ``min-replicas-to-write`` are connected
    (nothing was written: the refusal comes at a script's first write).
    """
    try:
        yield
    except (
        RedisConnectionError,
        RedisTimeoutError,
        OSError,
        ClusterError,  # a cluster without a master for some slot (a failover under way)
        RedisClusterException,  # no node reachable, a slot no node serves
    ) as exc:
        message = redact_text(tidy(str(exc)), *secrets(redis_url)) or type(exc).__name__
        where = redact(redis_url)
        raise BackendConnectionError(f"Redis at {where} did not answer: {message}") from None
    except ResponseError as exc:
        if not str(exc).startswith("NOREPLICAS"):
            raise
        reason = str(exc).partition(". script:")[0]
        raise BackendConnectionError(
            f"Redis at {redact(redis_url)} refused the write: {reason} "
            "(fewer replicas connected than its min-replicas-to-write)"
        ) from None
