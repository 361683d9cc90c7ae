"""Several RabbitMQ nodes behind one connection: their URLs, and moving between them.

A cluster is reached through any of its nodes, so ``amqp_url`` may name
several: one URL with several hosts, ``amqp://user:pw@h1:5672,h2:5673/vhost``
(the user, password, vhost and query apply to every host), or a list of
complete URLs. :class:`Endpoints` turns either into one URL per node.

:func:`connect` tries the nodes in the order given and returns an aio-pika
robust connection (:class:`RotatingConnection`) whose reconnects move on to
the next node. aio-pika reconnects to its one URL only; rotating happens in
one place, :meth:`RotatingConnection._on_connection_close`, which aio-pika
calls both when a live connection drops and when an attempt fails. The node
that dropped the connection is therefore tried last. Within a round of the
nodes the next one is tried at once; after a whole round has failed the
connection waits ``reconnect_interval``, doubled after each further failed
round up to ``max_reconnect_interval``. With one URL this is aio-pika's own
behaviour: a fixed ``reconnect_interval`` unless a larger maximum is given.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aio_pika
from aio_pika import RobustConnection
from aio_pika.abc import AbstractConnection
from aio_pika.connection import make_url
from pamqp.common import FieldTable

from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.redact import redact_text, redact_url

SCHEMES = ("amqp", "amqps")


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The nodes a connection may use, one single-host URL each, in the order given."""

    urls: tuple[str, ...]

    @classmethod
    def parse(cls, amqp_url: str | Sequence[str], *, key: str = "amqp_url") -> Endpoints:
        """One URL per node from a URL (with one or several hosts) or a list of URLs.

        Raises :class:`ConfigurationError`, naming ``key``, for anything else;
        messages never show a password.
        """
        given = [amqp_url] if isinstance(amqp_url, str) else amqp_url
        if not isinstance(given, Sequence) or not given:
            raise ConfigurationError(
                f"{key} must be an amqp:// URL or a non-empty list of them, got {_shown(amqp_url)}"
            )
        urls: list[str] = []
        for url in given:
            urls += _split_hosts(url, key)
        return cls(tuple(dict.fromkeys(urls)))

    def __len__(self) -> int:
        return len(self.urls)

    @property
    def shown(self) -> str:
        """The URLs with their passwords replaced by ``***``, comma-separated."""
        return ", ".join(redact_url(url) for url in self.urls)

    def redact(self, text: str) -> str:
        """``text`` with every password of these URLs replaced by ``***``."""
        return redact_text(text, *(urlsplit(url).password for url in self.urls))


def _shown(value: object) -> str:
    if isinstance(value, str):
        return repr(redact_url(value))
    return type(value).__name__


def _split_hosts(url: object, key: str) -> list[str]:
    """``amqp://u:p@h1:1,h2:2/v?q`` -> ``["amqp://u:p@h1:1/v?q", "amqp://u:p@h2:2/v?q"]``."""
    if not isinstance(url, str):
        raise ConfigurationError(f"{key} entries must be amqp:// URLs, got {_shown(url)}")
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in SCHEMES:
        raise ConfigurationError(
            f"{key} {redact_url(url)!r} is not a RabbitMQ URL: it must start with amqp:// "
            "or amqps:// (amqp://user:password@host:5672/vhost, or several nodes as "
            "amqp://user:password@host1:5672,host2:5672/vhost)"
        )
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hosts = netloc.rpartition("@")
    found = []
    for host in hosts.split(","):
        single = f"{scheme}://{userinfo}{at}{host.strip()}{tail}"
        try:
            parts = urlsplit(single)
            parts.port  # noqa: B018 - raises ValueError for a port that is no number
        except ValueError as exc:
            raise ConfigurationError(f"{key} {redact_url(url)!r}: {exc}") from None
        if not parts.hostname:
            raise ConfigurationError(
                f"{key} {redact_url(url)!r} names an empty host: separate hosts with "
                "single commas (amqp://user:password@host1:5672,host2:5672/vhost)"
            )
        found.append(single)
    return found


class RotatingConnection(RobustConnection):
    """A robust connection whose every reconnect attempt goes to the next node.

    Connection options in a URL's query (``heartbeat``, TLS files, ...) are
    read by aiormq from the URL of each attempt.
    """

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        start: int = 0,
        reconnect_interval: float,
        max_reconnect_interval: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            make_url(endpoints.urls[start]), reconnect_interval=reconnect_interval, **kwargs
        )
        self.endpoints = endpoints
        self.node = start
        self.base_interval = reconnect_interval
        self.max_interval = max(max_reconnect_interval or reconnect_interval, reconnect_interval)
        self.failures = 0  # attempts failed (or connections lost) since the last success

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # aio-pika calls this when a live connection drops and when an attempt
        # fails; either way the next attempt goes to the next node.
        self.failures += 1
        self.node = (self.node + 1) % len(self.endpoints)
        self.url = make_url(self.endpoints.urls[self.node])
        self.reconnect_interval = self.wait_after(self.failures)
        await super()._on_connection_close(closing)

    async def _on_connected(self) -> None:
        self.failures = 0
        self.reconnect_interval = self.base_interval
        await super()._on_connected()

    def wait_after(self, failures: int) -> float:
        """Seconds to wait before the next attempt, after ``failures`` in a row."""
        rounds, within = divmod(failures, len(self.endpoints))
        if within:
            return 0.0  # the round of the nodes is not over: try the next one at once
        return min(self.base_interval * 2.0 ** (rounds - 1), self.max_interval)


class UnreachableError(Exception):
    """No node accepted the connection; ``failures`` holds each node's URL and error."""

    def __init__(self, failures: Sequence[tuple[str, BaseException]]) -> None:
        super().__init__(
            "; ".join(f"{redact_url(url)}: {type(exc).__name__}: {exc}" for url, exc in failures)
        )
        self.failures = tuple(failures)


async def connect(
    endpoints: Endpoints,
    *,
    timeout: float,
    reconnect_interval: float,
    max_reconnect_interval: float | None = None,
    client_properties: FieldTable | None = None,
) -> RotatingConnection:
    """A robust connection to the first node that accepts one, tried in order.

    With one URL its own error is raised; with several, :class:`UnreachableError`.
    """
    failures: list[tuple[str, BaseException]] = []
    for start, url in enumerate(endpoints.urls):
        connection = RotatingConnection(
            endpoints,
            start=start,
            reconnect_interval=reconnect_interval,
            max_reconnect_interval=max_reconnect_interval,
            client_properties=client_properties,
        )
        try:
            await connection.connect(timeout=timeout)
        except asyncio.CancelledError:
            await _close_quietly(connection)
            raise
        except Exception as exc:
            await _close_quietly(connection)
            failures.append((url, exc))
            continue
        return connection
    raise _unreachable(failures)


async def connect_once(
    endpoints: Endpoints, *, timeout: float, client_properties: FieldTable | None = None
) -> AbstractConnection:
    """A plain (not reconnecting) connection to the first node that accepts one."""
    failures: list[tuple[str, BaseException]] = []
    for url in endpoints.urls:
        try:
            return await aio_pika.connect(url, timeout=timeout, client_properties=client_properties)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures.append((url, exc))
    raise _unreachable(failures)


def _unreachable(failures: list[tuple[str, BaseException]]) -> BaseException:
    if len(failures) == 1:
        return failures[0][1]
    return UnreachableError(failures)


async def _close_quietly(connection: AbstractConnection) -> None:
    with contextlib.suppress(Exception):
        await connection.close()
