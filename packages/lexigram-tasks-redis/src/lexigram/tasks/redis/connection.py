"""Opening redis-py clients the way this backend does, for the packages built on it
(the dead letter queue's and the scheduler's Redis storages).

Clients reconnect and resend a command after a dropped connection, use TCP
keepalive, and every failure to connect becomes
:class:`~lexigram.tasks.BackendConnectionError` naming the URL with its
password hidden.
"""

from __future__ import annotations

from lexigram.tasks.redis._connection import (
    RETRIES,
    SCHEMES,
    client_defaults,
    open_client,
    reported,
    validate_url,
)

__all__ = ["RETRIES", "SCHEMES", "client_defaults", "open_client", "reported", "validate_url"]
