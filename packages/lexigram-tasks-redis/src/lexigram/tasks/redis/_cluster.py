"""``redis+cluster://`` URLs: Redis Cluster, through redis-py's asyncio ``RedisCluster``.

``redis+cluster://[user:password@]host:port[,host:port...][/0][?options]``
names some of the cluster's nodes (port 6379 unless given; the client
learns the others from them); ``rediss+cluster://`` talks TLS. The
database can only be 0, the only one a cluster has. Query options are
redis-py's, as in a ``redis://`` URL.

A cluster runs a script only when every key it touches lies in one hash
slot, so a queue on a cluster keeps all its keys under one hash tag
(:meth:`~lexigram.tasks.redis.keys.QueueKeys.for_queue` with ``tag=``).
:class:`ClusterScript` runs the queue's scripts on the master of that slot.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.redis._scripts import PreparedScript
from lexigram.tasks.redis._sentinel import parse_address, redact, server_options
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: URL schemes of a Redis Cluster (the second one with TLS).
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
# A hash tag: the first {...} with something inside.
_TAG = re.compile(r"\{[^}]+\}")
#: The port of a node the URL names without one.
DEFAULT_PORT = 6379


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The nodes a ``redis+cluster://`` URL names and the options of their connections.

    Raises :class:`ConfigurationError` naming what is wrong (the password hidden).
    """

    def bad(problem: str) -> ConfigurationError:
        return ConfigurationError(f"cluster URL {redact(url)!r}: {problem}")

    scheme, _, rest = url.partition("://")
    tls = scheme.lower() == "rediss+cluster"
    try:
        parts = urlsplit(f"x://{rest}")
    except ValueError as exc:
        raise bad(str(exc)) from None
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = (
        [parse_address(item, "node", DEFAULT_PORT, bad) for item in hosts.split(",")]
        if hosts
        else []
    )
    if not nodes:
        raise bad("it names no node: list them as host:port,host:port after '://'")
    db = parts.path.strip("/") or "0"
    if db != "0":
        raise bad(f"database {db!r}: a Redis Cluster has only database 0")
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    options = server_options(userinfo, tls, 0, query, bad)
    options.pop("db", None)
    return nodes, options


def cluster_client(url: str, options: dict[str, Any]) -> Redis:
    """A client of the cluster ``url`` names (nothing is contacted yet).

    ``options`` are the connection options of every other lexigram client
    (retries, keepalive, timeouts). The result is a ``RedisCluster``, typed
    as the ``Redis`` it stands in for: it takes the same commands, routed by
    key to the master of the key's slot.
    """
    nodes, url_options = parse_cluster_url(url)
    settings = {**options, **url_options}
    settings.pop("db", None)
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes], **settings
    )
    return cast(Redis, client)


def hash_tagged(redis_url: str, namespace: str) -> str:
    """``namespace`` as a key prefix for ``redis_url``: on a cluster, wrapped in a
    hash tag (``{namespace}``) unless it holds one, so that a store's keys share
    one slot and its scripts may touch several of them; elsewhere unchanged."""
    if is_cluster_url(redis_url) and not _TAG.search(namespace):
        return "{" + namespace + "}"
    return namespace


def is_cluster(client: Redis) -> bool:
    """Whether ``client`` is a Redis Cluster client."""
    return isinstance(client, RedisCluster)


class ClusterScript(PreparedScript):
    """A queue's script run on the cluster master that holds the queue's hash slot.

    Calls go through ``RedisCluster``, which routes them by the first key,
    follows MOVED replies and refreshes its view of the cluster after a
    failover; the scripts are loaded on every master (and again on a master
    that does not know one, such as a promoted replica).
    """

    async def __call__(self, args: list[Any]) -> Any:
        try:
            return await self._evalsha(args)
        except NoScriptError:
            await self._load_on_master()
            return await self._evalsha(args)

    async def _load_on_master(self) -> None:
        """Load the script on the master that serves the queue's slot now.

        A replica promoted by a failover starts with an empty script cache, and
        the cluster client may still list it as a replica for a while, so a
        SCRIPT LOAD sent to "every primary" can miss the very node that refused.
        """
        cluster = cast(RedisCluster, self.client)
        node = _master_of(cluster, self.keys[0])
        await cluster.execute_command("SCRIPT LOAD", self.script.source, target_nodes=node)

    def _evalsha(self, args: list[Any]) -> Any:
        return self.client.evalsha(self.script.sha, len(self.keys), *self.keys, *self.head, *args)

    async def after_blpop(self, wake_key: str, timeout: float, args: list[Any]) -> Any:
        """BLPOP ``wake_key`` for up to ``timeout`` seconds, then run the script
        (one pipeline: both go to the slot's master in one write)."""
        cluster = cast(RedisCluster, self.client)
        try:
            async with cluster.pipeline() as pipe:
                pipe.blpop([wake_key], timeout)
                pipe.evalsha(self.script.sha, len(self.keys), *self.keys, *self.head, *args)
                replies = await pipe.execute()
            return replies[-1]
        except NoScriptError:  # the wait is over: load the script and run it alone
            return await self(args)

    async def call_then_wait(self, args: list[Any], replicas: int, timeout: float) -> list[Any]:
        """Run the script, then WAIT on the same connection to the slot's master."""
        cluster = cast(RedisCluster, self.client)
        wait = [b"*3\r\n", *map(self._bulk, ("WAIT", replicas, max(1, round(timeout * 1000))))]
        packed = self.pack(args) + b"".join(wait)
        # After a failover both can come, one after the other: MOVED from the old
        # master, then NOSCRIPT from the promoted replica. Each is answered once;
        # neither reply ran the script, so trying again cannot store a job twice.
        loaded = moved = False
        while True:
            try:
                return await _on_master(cluster, self.keys[0], packed)
            except NoScriptError:
                if loaded:
                    raise
                loaded = True
                await self._load_on_master()
            except MovedError:  # the slot has a new master: ask where
                if moved:
                    raise
                moved = True
                await _refresh(cluster)
            except (RedisConnectionError, RedisTimeoutError):
                await _refresh(cluster)  # for the producer's next try
                raise


async def _refresh(cluster: RedisCluster) -> None:
    """Learn which master serves which slot now (best effort: during a failover
    the nodes may not agree yet; the next routed command asks again)."""
    with contextlib.suppress(RedisError, RedisClusterException):
        await cluster.nodes_manager.initialize()


def _master_of(cluster: RedisCluster, key: str) -> ClusterNode:
    """The node serving ``key``'s slot, as the cluster client knows it now."""
    node = cluster.get_node_from_key(key)
    if node is None:
        raise ClusterDownError(f"no master serves the slot of {key!r}")
    return node


async def _on_master(cluster: RedisCluster, key: str, packed: bytes) -> list[Any]:
    """Send two packed commands to the master of ``key``'s slot; return both replies."""
    node = _master_of(cluster, key)
    connection = node.acquire_connection()
    try:
        await connection.send_packed_command(packed)
        return [await connection.read_response() for _ in range(2)]
    except BaseException:
        # A reply left unread (an error reply to the script, a cancellation):
        # the connection cannot be reused. A failed master is noticed by the
        # cluster client's next routed command, which refreshes its slot map.
        await connection.disconnect(nowait=True)
        raise
    finally:
        node.release(connection)
