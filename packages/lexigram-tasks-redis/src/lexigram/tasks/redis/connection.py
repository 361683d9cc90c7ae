"""Opening redis-py clients the way this backend does, for the packages built on it
(the dead letter queue's and the scheduler's Redis storages).

Clients reconnect and resend a command after a dropped connection, use TCP
keepalive, and every failure to connect becomes
:class:`~lexigram.tasks.BackendConnectionError` naming the URL with its
password hidden. ``redis+sentinel://`` URLs (a master found through Redis
Sentinel) work wherever a ``redis://`` URL does; :func:`resolve_url` turns
``sentinels=`` and ``service_name=`` keywords into one, and :func:`redact`
hides both the URL's password and a ``sentinel_password`` in its query.
``redis+cluster://`` URLs name a Redis Cluster; a storage whose scripts
touch several keys puts its key prefix through :func:`hash_tagged`.
"""

from __future__ import annotations

from lexigram.tasks.redis._cluster import CLUSTER_SCHEMES, hash_tagged
from lexigram.tasks.redis._connection import (
    RETRIES,
    SCHEMES,
    client_defaults,
    open_client,
    reported,
    resolve_url,
    validate_url,
)
from lexigram.tasks.redis._sentinel import (
    SENTINEL_SCHEMES,
    SentinelAddress,
    redact,
    sentinel_url,
)

__all__ = [
    "CLUSTER_SCHEMES",
    "RETRIES",
    "SCHEMES",
    "SENTINEL_SCHEMES",
    "SentinelAddress",
    "client_defaults",
    "hash_tagged",
    "open_client",
    "redact",
    "reported",
    "resolve_url",
    "sentinel_url",
    "validate_url",
]
