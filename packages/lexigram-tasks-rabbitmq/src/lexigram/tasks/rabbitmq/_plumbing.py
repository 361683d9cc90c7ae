"""Connection plumbing of :class:`RabbitMQTaskQueue`: its channels and its error texts.

:class:`Plumbing` holds the connection state the other parts share; the
delivery path (:mod:`._delivery`) and the queue itself build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import unquote, urlsplit

import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import AbstractChannel

from lexigram.tasks.protocol import BaseTaskQueue
from lexigram.tasks.rabbitmq.endpoints import Endpoints, UnreachableError


class Plumbing(BaseTaskQueue):
    """The connection and channels of a RabbitMQ queue (the base of :class:`RabbitMQTaskQueue`)."""

    endpoints: Endpoints
    queue_name: str
    connection_name: str | None
    _connection: AbstractRobustConnection | None
    _publishing: AbstractRobustChannel | None
    _consuming: AbstractRobustChannel | None

    def _require_connection(self) -> None:
        if self._connection is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")

    def _publishing_channel(self) -> AbstractRobustChannel:
        if self._publishing is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")
        return self._publishing

    def _consuming_channel(self) -> AbstractRobustChannel:
        if self._consuming is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")
        return self._consuming

    async def _temporary_channel(self) -> AbstractChannel:
        """A plain channel for probing; a failed passive declare closes only it."""
        if self._connection is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")
        await self._connection.ready()
        transport = self._connection.transport
        assert transport is not None
        return await transport.connection.channel()

    def _connection_label(self) -> str:
        return self.connection_name or f"lexigram-tasks {self.queue_name}"

    def _redacted(self, exc: BaseException) -> str:
        return self.endpoints.redact(str(exc))

    def _describe_failure(self, exc: BaseException) -> str:
        detail = self._redacted(exc) or type(exc).__name__
        hint = ""
        if any(isinstance(cause, AUTHENTICATION_ERRORS) for cause in failure_causes(exc)):
            hint = " (check the user name and password)"
        nodes = "any of the nodes " if len(self.endpoints) > 1 else ""
        return (
            f"cannot connect to RabbitMQ at {nodes}{self.endpoints.shown}: "
            f"{type(exc).__name__}: {detail}{hint}"
        )

    def _describe_vhost_refusal(self) -> str:
        parts = urlsplit(self.endpoints.urls[0])
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        user = unquote(parts.username) if parts.username else "guest"
        return (
            f"cannot connect to RabbitMQ at {self.endpoints.shown}: vhost {vhost!r} "
            f"does not exist or access refused for user {user!r} (create it with "
            f"`rabbitmqctl add_vhost {vhost}` and grant access with `rabbitmqctl "
            f"set_permissions -p {vhost} {user} '.*' '.*' '.*'`, or fix the URL's path)"
        )

    def _describe_publish_failure(self, exc: BaseException) -> str:
        return (
            f"publishing to {self.endpoints.shown} failed: "
            f"{type(exc).__name__}: {self._redacted(exc)}"
        )

    async def _wait_for_reconnect(self, timeout: float) -> None:
        if self._publishing is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._publishing.ready(), timeout)


AUTHENTICATION_ERRORS = (
    aiormq.exceptions.ProbableAuthenticationError,
    aiormq.exceptions.AuthenticationError,
)


def failure_causes(exc: BaseException) -> tuple[BaseException, ...]:
    """The errors behind a failed connect: each node's, or ``exc`` itself for one node."""
    if isinstance(exc, UnreachableError):
        return tuple(cause for _, cause in exc.failures)
    return (exc,)


def vhost_refused(exc: BaseException) -> bool:
    """Whether the broker answered ``connection.open`` with ``connection.close``.

    RabbitMQ does that for a vhost that does not exist or that the user may not
    access; aiormq reports it as an unexpected frame, without the broker's text.
    """
    text = str(exc)
    return (
        isinstance(exc, aiormq.exceptions.InvalidFrameError)
        and "Connection.OpenOk" in text
        and "Connection.Close" in text
    )
