"""Opening connections, and telling a lost connection from a failed statement.

Every connection and pool of the PostgreSQL packages is made here; a DSN
naming several hosts is handled by :mod:`._hosts` (failover).
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from lexigram.tasks.errors import BackendConnectionError, ConfigurationError
from lexigram.tasks.postgres import _hosts
from lexigram.tasks.redact import redact_text, redact_url

#: Errors after which the statement may simply be retried on a fresh connection.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.AdminShutdownError,  # pg_terminate_backend, server shutdown
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.InterfaceError,  # "connection is closed", "connection was closed in the middle"
    # A connection the server just terminated, whose close asyncpg has not
    # yet processed: "cannot switch to state ...; another operation is in progress".
    asyncpg.exceptions.InternalClientError,
    ConnectionError,  # also: no host of a multi-host DSN could be used
    OSError,
)

#: Errors after which a pool's connections may all be to a server that went
#: away or can no longer write (a failover demoted it): each is answered by
#: opening fresh connections and running the statement again.
RETRY_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # 25006: a standby or read-only server
)


#: The URL schemes asyncpg connects with.
SCHEMES = ("postgres", "postgresql")


def validate_url(url: str) -> None:
    """Raise :class:`ConfigurationError` unless ``url`` is a usable PostgreSQL URL.

    It must start with ``postgres(ql)://``; several hosts must each read
    ``host[:port]`` (``[address]:port`` for IPv6); ``target_session_attrs``,
    if given, must pick a server that takes writes. The message names the
    URL (password hidden) and the problem: a wrong scheme would otherwise
    only show at connect time, looking like an unreachable server.
    """
    scheme, separator, _ = url.partition("://")
    if not separator or scheme.lower() not in SCHEMES:
        raise ConfigurationError(
            f"{redacted(url)!r} is not a PostgreSQL URL: it must start with "
            + " or ".join(f"{s}://" for s in SCHEMES)
        )
    _hosts.check(url)


def dsn_password(dsn: str) -> str | None:
    """The password written in ``dsn``, so that error messages can hide it."""
    try:
        return urlsplit(dsn).password if "://" in dsn else None
    except ValueError:
        return None


def redacted(dsn: str) -> str:
    """``dsn`` without its password, even when it cannot be parsed."""
    try:
        return redact_url(dsn)
    except ValueError:  # e.g. a non-numeric port
        password = dsn_password(dsn)
        return redact_text(dsn, password) if password else "<unparseable DSN>"


def connection_error(dsn: str, exc: BaseException, *, purpose: str = "") -> BackendConnectionError:
    """A :class:`BackendConnectionError` for ``exc`` that never shows the password.

    ``purpose`` (e.g. ``"the dead letter queue"``) says what the connection was for.
    """
    detail = redact_text(f"{type(exc).__name__}: {exc}", dsn, dsn_password(dsn))
    where = f"{redacted(dsn)} for {purpose}" if purpose else redacted(dsn)
    return BackendConnectionError(f"cannot connect to PostgreSQL at {where}: {detail}")


_CONNECT_FAILURES: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.PostgresError,  # bad password, unknown database or role
    socket.gaierror,
    TimeoutError,
    ValueError,  # malformed DSN
)


async def open_connection(
    dsn: str, *, timeout: float = 10.0, purpose: str = "", **kwargs: Any
) -> asyncpg.Connection:
    """One connection to ``dsn``; failures become :class:`BackendConnectionError`.

    With several hosts, ``timeout`` applies to each (see :mod:`._hosts`).
    """
    try:
        if _hosts.several(dsn):
            return await _hosts.connect_first(dsn, timeout=timeout, **kwargs)
        return await asyncpg.connect(dsn, timeout=timeout, **kwargs)
    except _CONNECT_FAILURES as exc:
        raise connection_error(dsn, exc, purpose=purpose) from None


async def open_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    timeout: float,
    purpose: str = "",
    **kwargs: Any,
) -> asyncpg.Pool:
    """A connection pool to ``dsn``; failures become :class:`BackendConnectionError`.

    With several hosts, each new connection goes to the first host that
    takes writes (see :mod:`._hosts`), so a pool whose connections were
    dropped after a failover reconnects to the new primary.
    """
    if _hosts.several(dsn):
        kwargs.setdefault("connect", _hosts.connect_first)
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, timeout=timeout, **kwargs
        )
    except _CONNECT_FAILURES as exc:
        raise connection_error(dsn, exc, purpose=purpose) from None
    return pool
