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
from lexigram.tasks.redact import redact_text, redact_url


class Plumbing(BaseTaskQueue):
    """The connection and channels of a RabbitMQ queue (the base of :class:`RabbitMQTaskQueue`)."""

    amqp_url: str
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
        return redact_text(str(exc), urlsplit(self.amqp_url).password)

    def _describe_failure(self, exc: BaseException) -> str:
        detail = self._redacted(exc) or type(exc).__name__
        hint = ""
        if isinstance(
            exc,
            aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.AuthenticationError,
        ):
            hint = " (check the user name and password)"
        return (
            f"cannot connect to RabbitMQ at {redact_url(self.amqp_url)}: "
            f"{type(exc).__name__}: {detail}{hint}"
        )

    def _describe_vhost_refusal(self) -> str:
        parts = urlsplit(self.amqp_url)
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        user = unquote(parts.username) if parts.username else "guest"
        return (
            f"cannot connect to RabbitMQ at {redact_url(self.amqp_url)}: vhost {vhost!r} "
            f"does not exist or access refused for user {user!r} (create it with "
            f"`rabbitmqctl add_vhost {vhost}` and grant access with `rabbitmqctl "
            f"set_permissions -p {vhost} {user} '.*' '.*' '.*'`, or fix the URL's path)"
        )

    def _describe_publish_failure(self, exc: BaseException) -> str:
        return (
            f"publishing to {redact_url(self.amqp_url)} failed: "
            f"{type(exc).__name__}: {self._redacted(exc)}"
        )

    async def _wait_for_reconnect(self, timeout: float) -> None:
        if self._publishing is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._publishing.ready(), timeout)


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
