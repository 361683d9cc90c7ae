"""Opening asyncpg connections and pools the way this backend does, for the packages
built on it (the dead letter queue's and the scheduler's PostgreSQL storages).

Every failure to connect becomes :class:`~lexigram.tasks.BackendConnectionError`
naming the DSN with its password hidden. A DSN naming several hosts connects
to the first that takes writes (a primary and its standbys, see
``docs/backends/postgres.md``); :data:`RETRY_ERRORS` are the errors after
which a statement may be run again on a fresh connection.
"""

from __future__ import annotations

from lexigram.tasks.postgres._connect import (
    CONNECTION_ERRORS,
    RETRY_ERRORS,
    SCHEMES,
    connection_error,
    dsn_password,
    open_connection,
    open_pool,
    redacted,
    validate_url,
)

__all__ = [
    "CONNECTION_ERRORS",
    "RETRY_ERRORS",
    "SCHEMES",
    "connection_error",
    "dsn_password",
    "open_connection",
    "open_pool",
    "redacted",
    "validate_url",
]
