"""``redis+sentinel://`` URLs: a master found through Redis Sentinel, followed across failovers.

``redis+sentinel://[user:password@]host[:port][,host[:port]...]/service_name[/db][?options]``
names the sentinels (port 26379 unless given) and the service they watch;
``rediss+sentinel://`` talks TLS to the master and, unless
``sentinel_ssl=false``, to the sentinels. The credentials are the master's;
``sentinel_username`` / ``sentinel_password`` in the query are the
sentinels' own. Other query options are redis-py's (``ssl_cert_reqs``,
``client_name`` ...), applied to the master's connections.

The client is redis-py's ``Sentinel.master_for``: every new connection asks
the sentinels where the master is, so once a connection to a failed master
breaks, the next one (a retried command's) goes to the promoted replica.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.redact import redact_url
from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel

#: URL schemes of a master found through Sentinel (the second one with TLS).
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
#: The port a sentinel listens on when the URL gives none.
DEFAULT_SENTINEL_PORT = 26379
#: How long a sentinel may take to connect and answer when none is configured.
SENTINEL_TIMEOUT = 5.0

_QUERY_SECRET = re.compile(r"([?&][^=&#]*password=)[^&#]*", re.IGNORECASE)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

# Builds the error naming what is wrong with the URL being read.
_Bad = Callable[[str], ConfigurationError]

#: A sentinel as ``sentinels=`` accepts it: ``"host:port"``, ``"host"`` or ``(host, port)``.
SentinelAddress = str | tuple[str, int]


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def redact(url: str) -> str:
    """``url`` with its password and any ``...password=`` query value shown as ``***``."""
    return _QUERY_SECRET.sub(r"\1***", redact_url(url))


# How redis-py names a sentinel in "No master found" errors: its client's whole repr.
_CLIENT_REPR = re.compile(
    r"<redis\.asyncio\.client\.Redis\(.*?host=([^,]+),port=(\d+),.*?\)>\)>\)>"
)


def tidy(message: str) -> str:
    """redis-py's master-discovery error with each sentinel named by its address."""
    message = message.replace(" : <redis", ": <redis", 1)
    return _CLIENT_REPR.sub(r"sentinel \1:\2", message)


def secrets(url: str) -> list[str]:
    """The passwords in ``url`` (userinfo and query), to scrub from error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [parts.password, unquote(parts.password)] if parts.password else []
    for name, values in parse_qs(parts.query).items():
        if name.lower().endswith("password"):
            found += values
    return [secret for secret in found if secret]


@dataclass(frozen=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL says: where the sentinels are and how to talk to whom."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    #: Options of the master's connections (db, credentials, TLS, redis-py's query options).
    master_options: dict[str, Any] = field(default_factory=dict)
    #: Options of the connections to the sentinels (their credentials and TLS).
    sentinel_options: dict[str, Any] = field(default_factory=dict)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Read a ``redis+sentinel://`` URL; :class:`ConfigurationError` names what is wrong."""

    def bad(problem: str) -> ConfigurationError:
        return ConfigurationError(f"Sentinel URL {redact(url)!r}: {problem}")

    scheme, _, rest = url.partition("://")
    if scheme.lower() not in SENTINEL_SCHEMES:
        raise bad("it must start with redis+sentinel:// or rediss+sentinel:// (TLS)")
    tls = scheme.lower() == "rediss+sentinel"
    try:
        parts = urlsplit(f"x://{rest}")
    except ValueError as exc:
        raise bad(str(exc)) from None
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = (
        tuple(
            parse_address(item, "sentinel", DEFAULT_SENTINEL_PORT, bad) for item in hosts.split(",")
        )
        if hosts
        else ()
    )
    if not sentinels:
        raise bad("it names no sentinel: list them as host:port,host:port after '://'")
    service_name, db = _service_and_db(parts.path, bad)
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    sentinel_options = _sentinel_options(query, tls, bad)
    master_options = server_options(userinfo, tls, db, query, bad)
    if sentinel_options["ssl"]:  # the same certificates and checks as the master's
        sentinel_options.update({k: v for k, v in master_options.items() if k.startswith("ssl_")})
    return SentinelTarget(sentinels, service_name, master_options, sentinel_options)


def server_options(
    userinfo: str, tls: bool, db: int, query: dict[str, str], bad: _Bad
) -> dict[str, Any]:
    """The connection options of a server named in a Sentinel or Cluster URL.

    redis-py's own parser reads the credentials and query options, as it
    would for a ``redis://`` URL, so the same options work everywhere.
    """
    plain = f"{'rediss' if tls else 'redis'}://{userinfo}{'@' if userinfo else ''}h/{db}"
    if query:
        plain += "?" + urlencode(query)
    try:
        options: dict[str, Any] = dict(parse_url(plain))
    except ValueError as exc:
        raise bad(str(exc)) from None
    for key in ("host", "port", "connection_class"):
        options.pop(key, None)
    if tls:
        options["ssl"] = True
    return options


def parse_address(item: str, kind: str, default_port: int, bad: _Bad) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[IPv6]:port`` as (host, port); ``kind`` names it in errors."""
    text = item.strip()
    if text.startswith("["):  # [IPv6]:port
        host, _, tail = text[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
        if tail and not tail.startswith(":"):
            raise bad(f"{kind} {item!r} is not host:port")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise bad(f"{kind} {item!r} has no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise bad(f"{kind} {item!r} has no valid port ({port_text!r})")
    return host, int(port_text)


def _service_and_db(path: str, bad: _Bad) -> tuple[str, int]:
    inner = path.removeprefix("/").removesuffix("/")
    segments = [unquote(segment) for segment in inner.split("/")] if inner else []
    if not segments or not segments[0]:
        raise bad("it names no service: add the master's name as the path, e.g. /mymaster/0")
    if len(segments) > 2:
        raise bad(f"path {path!r} has more than /service_name/db")
    db_text = segments[1] if len(segments) == 2 else "0"
    if not db_text.isdigit():
        raise bad(f"database {db_text!r} (after the service name) is not a number")
    return segments[0], int(db_text)


def _sentinel_options(query: dict[str, str], tls: bool, bad: _Bad) -> dict[str, Any]:
    options: dict[str, Any] = {}
    username, password = query.pop("sentinel_username", None), query.pop("sentinel_password", None)
    if username:
        options["username"] = username
    if password:
        options["password"] = password
    flag = query.pop("sentinel_ssl", None)
    if flag is None:
        options["ssl"] = tls
    elif flag.lower() in _TRUE | _FALSE:
        options["ssl"] = flag.lower() in _TRUE
    else:
        raise bad(f"sentinel_ssl={flag!r} is not true or false")
    return options


def sentinel_url(
    sentinels: Sequence[SentinelAddress], service_name: str, *, base: str = "redis://"
) -> str:
    """The ``redis+sentinel://`` URL for ``sentinels`` watching ``service_name``.

    ``base``, a ``redis://`` or ``rediss://`` URL, gives the credentials, the
    database, TLS and query options; its host and port are not used.

    >>> sentinel_url(["s1:26379", ("s2", 26380)], "mymaster", base="redis://:pw@localhost/2")
    'redis+sentinel://:pw@s1:26379,s2:26380/mymaster/2'
    """
    scheme, separator, rest = base.partition("://")
    if not separator or scheme.lower() not in ("redis", "rediss"):
        raise ConfigurationError(
            f"{redact(base)!r} cannot go with sentinels=: give a redis:// or rediss:// URL "
            "(for the credentials and database), or the whole redis+sentinel:// URL alone"
        )
    if isinstance(sentinels, str) or not sentinels:
        raise ConfigurationError(
            f"sentinels must be a non-empty list of 'host:port' or (host, port), got {sentinels!r}"
        )
    if not service_name:
        raise ConfigurationError("service_name must name the master the sentinels watch")
    parts = urlsplit(f"x://{rest}")
    userinfo = parts.netloc.rpartition("@")[0]
    hosts = ",".join(_format(address) for address in sentinels)
    db = parts.path.strip("/") or "0"
    url = f"{scheme.lower()}+sentinel://{userinfo}{'@' if userinfo else ''}{hosts}"
    url += f"/{quote(service_name, safe='')}/{db}"
    return url + (f"?{parts.query}" if parts.query else "")


def _format(address: SentinelAddress) -> str:
    if isinstance(address, str):
        return address
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SentinelMasterClient(Redis):
    """A client of the master the sentinels name; closing it closes their connections too."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        sentinel, self.sentinel_manager = self.sentinel_manager, None
        if sentinel is not None:
            await sentinel.aclose()


def master_client(url: str, options: dict[str, Any]) -> SentinelMasterClient:
    """A client of the master named by ``url`` (nothing is contacted yet).

    ``options`` are the connection options of every other lexigram client
    (retries, keepalive, timeouts); the sentinels get their socket options,
    with :data:`SENTINEL_TIMEOUT` when no connect timeout is set, since a
    sentinel that hangs must not hang the search for the master.
    """
    target = parse_sentinel_url(url)
    timeout = options.get("socket_connect_timeout") or SENTINEL_TIMEOUT
    sentinel_options = {
        **{k: v for k, v in options.items() if k.startswith("socket_")},
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        **target.sentinel_options,
    }
    sentinel = Sentinel(target.sentinels, sentinel_kwargs=sentinel_options)
    client: SentinelMasterClient = sentinel.master_for(
        target.service_name,
        redis_class=SentinelMasterClient,
        **{**options, **target.master_options},
    )
    client.sentinel_manager = sentinel
    return client
