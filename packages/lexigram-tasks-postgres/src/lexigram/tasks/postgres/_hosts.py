"""DSNs naming several servers (``postgresql://h1:5432,h2:5433/db``): checking them,
and connecting to the first server that can take writes.

asyncpg reads such a DSN itself, but under one ``timeout`` for all its hosts:
a host that does not answer at all (a machine that died, a dropped route)
uses up that time, and the next host is never tried. So a DSN with several
hosts is connected here, one host at a time, each with the whole timeout
(as libpq's ``connect_timeout``), and the host that answered last is tried
first next time, so that new connections after a failover do not wait on
the dead server. Without ``target_session_attrs`` the connection must
accept writes (``read-write``): every part of lexigram-tasks writes.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.redact import redact_url

#: The ``target_session_attrs`` values asyncpg knows, and those that allow writes.
TARGETS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")
WRITABLE_TARGETS = ("any", "primary", "read-write")
#: What a DSN with several hosts asks of a server unless it says otherwise.
DEFAULT_TARGET = "read-write"

#: Failures after which the next host is tried; an authentication error, an
#: unknown database or a bad option is raised at once, as libpq does.
_NEXT_HOST: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,  # starting up, shutting down, in recovery
    asyncpg.exceptions.TargetServerAttributeNotMatched,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)

#: DSN -> index of the host that answered last (process-wide, so that the pools
#: and LISTEN connections of one DSN all skip a dead host once one found it dead).
_last_good: dict[str, int] = {}


class Host(NamedTuple):
    host: str
    port: int | None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


class NoUsableHostError(ConnectionError):
    """No host of a multi-host DSN gave a connection; the message says why for each."""


def hosts(dsn: str) -> list[Host]:
    """The hosts written in ``dsn``'s authority, in order (empty if it names none).

    Raises :class:`ValueError` naming the entry that is not ``host[:port]``.
    """
    try:
        netloc = urlsplit(dsn).netloc
    except ValueError as exc:
        raise ValueError(f"the host part cannot be read ({exc})") from None
    written = netloc.rpartition("@")[2]
    if not written:
        return []
    entries = written.split(",")
    return [_host(entry, n, len(entries)) for n, entry in enumerate(entries, 1)]


def _host(entry: str, n: int, count: int) -> Host:
    where = f"host {n} of {count}" if count > 1 else "the host"
    if entry.startswith("["):  # an IPv6 address
        host, closed, rest = entry[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"{where} ({entry!r}) is not [address]:port")
        port_text = rest[1:]
    else:
        host, _, port_text = entry.partition(":")
    if not host:
        raise ValueError(f"{where} is empty")
    if not port_text:
        return Host(unquote(host), None)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"the port of {where} ({port_text!r}) is not a number from 1 to 65535")
    return Host(unquote(host), int(port_text))


def target_of(dsn: str) -> str | None:
    """The ``target_session_attrs`` written in ``dsn``'s query, if any."""
    try:
        values = parse_qs(urlsplit(dsn).query).get("target_session_attrs")
    except ValueError:
        return None
    return values[-1] if values else None


def check(dsn: str) -> None:
    """Raise :class:`ConfigurationError` for a bad host list or ``target_session_attrs``.

    A single host's port is left to asyncpg (it fails at connect, naming it).
    """
    target = target_of(dsn)
    if target is not None and target not in TARGETS:
        raise ConfigurationError(
            f"target_session_attrs={target!r} in {redact_url(dsn)!r} is not one of "
            + ", ".join(TARGETS)
        )
    if target is not None and target not in WRITABLE_TARGETS:
        raise ConfigurationError(
            f"target_session_attrs={target!r} in {redact_url(dsn)!r} picks a server that "
            "cannot write, and lexigram-tasks writes: use read-write (the default with "
            "several hosts) or primary"
        )
    if "," not in dsn.partition("?")[0]:
        return
    try:
        hosts(dsn)
    except ValueError as exc:
        raise ConfigurationError(f"{_safe(dsn)!r} is not a valid multi-host DSN: {exc}") from None


def wants_writable(dsn: str) -> bool:
    """Whether a connection to ``dsn`` must be to a server that takes writes.

    True with ``target_session_attrs`` ``read-write`` or ``primary``, and
    for several hosts without it (then :data:`DEFAULT_TARGET` applies).
    """
    target = target_of(dsn) or os.environ.get("PGTARGETSESSIONATTRS")
    if target is None:
        return len(_hosts_or_none(dsn) or ()) > 1
    return target in ("read-write", "primary")


def several(dsn: str) -> list[Host] | None:
    """The hosts of ``dsn`` when it names more than one, else None."""
    found = _hosts_or_none(dsn)
    return found if found is not None and len(found) > 1 else None


def _hosts_or_none(dsn: str) -> list[Host] | None:
    try:
        return hosts(dsn)
    except ValueError:
        return None


async def connect_first(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """A connection to the first host of ``dsn`` that accepts one (see the module doc).

    ``kwargs`` go to :func:`asyncpg.connect`; its ``timeout`` applies to each host.
    Raises :class:`NoUsableHostError` listing every host's failure.
    """
    found = hosts(dsn)
    if target_of(dsn) is None and not os.environ.get("PGTARGETSESSIONATTRS"):
        kwargs.setdefault("target_session_attrs", DEFAULT_TARGET)
    first = _last_good.get(dsn, 0) % len(found)
    failures: list[str] = []
    for index in [first, *(i for i in range(len(found)) if i != first)]:
        host = found[index]
        try:
            connection = await asyncpg.connect(dsn, host=host.host, port=host.port, **kwargs)
        except _NEXT_HOST as exc:
            failures.append(f"{host}: {_why(exc, kwargs.get('target_session_attrs'))}")
            continue
        _last_good[dsn] = index
        return connection
    raise NoUsableHostError("no host could be used: " + "; ".join(failures))


def _why(exc: BaseException, target: object) -> str:
    if isinstance(exc, asyncpg.exceptions.TargetServerAttributeNotMatched):
        return f"it does not match target_session_attrs={target or 'any'} (a standby or read-only)"
    if isinstance(exc, TimeoutError):
        return "no answer within the connect timeout"
    return f"{type(exc).__name__}: {exc}"


def _safe(dsn: str) -> str:
    try:
        return redact_url(dsn)
    except ValueError:
        return "<unparseable DSN>"
