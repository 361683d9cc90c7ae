"""A Redis Cluster of three masters and three replicas as plain ``redis-server`` processes.

The cluster tests start their own on loopback ports of their own (7200 to
7205, never the shared test server) and stop every process they started, by
PID. ``cluster-node-timeout`` is 2000 ms, so a killed master's replica takes
over a few seconds after the kill.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import ClassVar

import pytest
import redis
from _sentinel_nodes import _port_free, wait_for

from lexigram.tasks.protocol import TaskQueueProtocol
from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.testing import BackendSpec, ContractBase

#: Milliseconds of silence after which the cluster fails a master over to its replica.
NODE_TIMEOUT_MS = 2000
CREATE_OPTIONS = ("--cluster-replicas", "1", "--cluster-yes")


class ClusterNodes:
    """Six nodes on ``first_port`` .. ``first_port + 5``: three masters, one replica each."""

    def __init__(self, directory: Path, first_port: int) -> None:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            pytest.fail("redis-server and redis-cli are needed on PATH for the cluster tests")
        self.binary, self.cli = binary, cli
        self.directory = directory
        self.ports = [first_port + i for i in range(6)]
        busy = [port for port in self.ports if not _port_free(port)]
        if busy:
            pytest.fail(f"loopback ports {busy} are in use; the cluster tests need them")
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL naming every node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> ClusterNodes:
        for port in self.ports:
            self._server(port)
        for port in self.ports:
            wait_for(lambda p=port: self.client(p).ping(), 10, f"node {port} did not start")
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [self.cli, "--cluster", "create", *addresses, *CREATE_OPTIONS],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in self.ports:
            wait_for(lambda p=port: self._ready(p), 20, f"node {port} did not see the cluster ok")
        return self

    def _server(self, port: int) -> None:
        args = [
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
            *("--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--dir", str(self.directory)),
            *("--dbfilename", f"dump-{port}.rdb", "--repl-diskless-sync-delay", "0"),
            *("--daemonize", "no"),
        ]
        with (self.directory / f"{port}.log").open("wb") as log:
            self.processes[port] = subprocess.Popen(
                [self.binary, *args], stdout=log, stderr=subprocess.STDOUT
            )

    def _ready(self, port: int) -> bool:
        client = self.client(port)
        try:
            info = client.cluster("info")
            replicas_linked = all(
                node.get("connected") for node in client.cluster("nodes").values()
            )
        finally:
            client.close()
        state = info.get("cluster_state") if isinstance(info, dict) else None
        return state == "ok" and replicas_linked and int(info["cluster_known_nodes"]) == 6

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now."""
        for port, process in self.processes.items():
            if process.poll() is None:
                client = self.client(port)
                try:
                    slot = client.cluster("keyslot", key)
                    for start, end, master, *_ in client.cluster("slots"):
                        if start <= slot <= end:
                            return int(master[1])
                finally:
                    client.close()
        raise AssertionError("no cluster node is running")

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``."""
        process = self.processes[port]
        process.kill()
        process.wait(timeout=10)

    def restart(self, port: int) -> None:
        """Start the killed node on ``port`` again: it rejoins (its nodes file kept)
        as a replica of the master that took over its slots."""
        self._server(port)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait(timeout=10)


class ClusterHooks(ContractBase):
    """How the contract suites reach the cluster of the test module's ``cluster``
    fixture; ``shards`` set per class."""

    shards: ClassVar[int] = 1
    lease_seconds = 1.0

    @pytest.fixture(autouse=True)
    def _url(self, cluster: ClusterNodes) -> None:
        self.url = cluster.url

    async def create_queue(self, queue_name: str) -> TaskQueueProtocol:
        return RedisTaskQueue(self.url, queue_name, shards=self.shards)

    def queue_spec(self, queue_name: str) -> BackendSpec:
        options = {"redis_url": self.url, "queue_name": queue_name, "shards": self.shards}
        return BackendSpec("lexigram.tasks.redis:RedisTaskQueue", options)

    async def push_raw(self, queue: TaskQueueProtocol, payload: bytes) -> None:
        assert isinstance(queue, RedisTaskQueue)
        await queue.push_raw(payload)

    async def drop_queue(self, queue_name: str) -> None:
        async with RedisTaskQueue(self.url, queue_name, shards=self.shards) as queue:
            await queue.purge()
