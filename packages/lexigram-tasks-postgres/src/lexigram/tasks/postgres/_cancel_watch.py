"""LISTEN on a control channel for as long as the caller runs, reconnecting when it breaks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from lexigram.tasks.errors import BackendConnectionError
from lexigram.tasks.postgres._connect import open_connection
from lexigram.tasks.postgres._hosts import wants_writable

logger = logging.getLogger("lexigram.tasks.postgres")

#: Wait this long before connecting again after a failure or a lost connection.
RETRY_AFTER = 1.0
#: A quiet connection is checked this often: a peer that vanished without
#: closing the socket (a failover, a dropped route) sends no termination, and
#: a primary demoted to read-only keeps the connection open but hears no
#: NOTIFY of the new primary.
CHECK_EVERY = 15.0
#: True while the server still takes writes (what target_session_attrs=read-write asks).
_STILL_PRIMARY = (
    "SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off'"
)

_ERRORS: tuple[type[BaseException], ...] = (
    BackendConnectionError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


async def watch_channel(
    dsn: str,
    channel: str,
    on_payload: Callable[[str], None],
    *,
    timeout: float,
    application_name: str,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Call ``on_payload(payload)`` for each NOTIFY on ``channel``, until cancelled;
    ``on_listening()`` each time the LISTEN takes (first, and after a reconnect)."""

    def heard(connection: Any, pid: int, channel: str, payload: str) -> None:
        try:
            on_payload(payload)
        except Exception:
            logger.exception("a cancellation callback failed")

    while True:
        try:
            await _listen_until_lost(dsn, channel, heard, timeout, application_name, on_listening)
        except _ERRORS as exc:
            logger.warning("LISTEN %s failed (%s); retrying in %.0f s", channel, exc, RETRY_AFTER)
        await asyncio.sleep(RETRY_AFTER)


async def _listen_until_lost(
    dsn: str,
    channel: str,
    heard: Callable[[Any, int, str, str], None],
    timeout: float,
    application_name: str,
    on_listening: Callable[[], None] | None,
) -> None:
    connection = await open_connection(
        dsn, timeout=timeout, server_settings={"application_name": application_name}
    )
    lost = asyncio.get_running_loop().create_future()

    def terminated(connection: Any) -> None:
        if not lost.done():
            lost.set_result(None)

    try:
        connection.add_termination_listener(terminated)
        await connection.add_listener(channel, heard)
        if on_listening is not None:
            on_listening()
        check = _STILL_PRIMARY if wants_writable(dsn) else "SELECT true"
        while not lost.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(lost), CHECK_EVERY)
            if not lost.done() and not await asyncio.wait_for(connection.fetchval(check), timeout):
                logger.warning(
                    "the server of LISTEN %s no longer takes writes (a failover?); reconnecting",
                    channel,
                )
                return
        logger.info("the LISTEN %s connection was closed; reconnecting", channel)
    finally:
        connection.remove_termination_listener(terminated)
        if not connection.is_closed():
            try:
                await asyncio.wait_for(connection.close(), timeout)
            except BaseException:
                connection.terminate()
                raise
