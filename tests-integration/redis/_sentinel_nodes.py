"""A Redis master, one replica and three sentinels as plain ``redis-server`` processes.

The tests that use them start their own set on loopback ports of their own
(16380-16399 for the data nodes, 26380-26399 for the sentinels, never the
shared test server), and stop every process they started, by PID.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

SERVICE = "mymaster"
#: Sentinel timings: a master is down after 1 s of silence, a failover may take 3 s.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float, message: str) -> T:
    """Poll ``check`` until it returns something truthy (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (redis.RedisError, OSError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (waited {timeout:.0f}s)")
        time.sleep(0.05)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        # As redis-server does: connections of an earlier run in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class SentinelNodes:
    """One master, ``replicas`` replicas, three sentinels watching them as ``mymaster``.

    ``data_port`` is the master, the replicas follow it; ``sentinel_port``
    to ``sentinel_port + 2`` are the sentinels.
    """

    def __init__(
        self, directory: Path, data_port: int, sentinel_port: int, *, replicas: int = 1
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is needed on PATH for the Sentinel tests", pytrace=False)
        self.binary = binary
        self.directory = directory
        self.data_ports = [data_port + i for i in range(1 + replicas)]
        self.sentinel_ports = [sentinel_port + i for i in range(3)]
        busy = [p for p in self.data_ports + self.sentinel_ports if not _port_free(p)]
        if busy:
            pytest.fail(f"loopback ports {busy} are in use; the Sentinel tests need them")
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL of this set's master, database 0."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> SentinelNodes:
        master, *replicas = self.data_ports
        self._server(master)
        for replica in replicas:
            self._server(replica, "--replicaof", "127.0.0.1", str(master))
        # Sentinels started once the replicas are in sync list them from their
        # first INFO of the master, instead of after the next one (10 s later).
        for replica in replicas:
            self._wait_synced(replica)
        for port in self.sentinel_ports:
            config = self.directory / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self._spawn(port, str(config), "--sentinel")
        for port in self.sentinel_ports:
            sentinel = self.client(port)
            try:
                wait_for(
                    lambda s=sentinel: self._sees_everyone(s.sentinel_master(SERVICE)),
                    15,
                    f"sentinel {port} did not find the replicas and the other sentinels",
                )
            finally:
                sentinel.close()
        return self

    def _server(self, port: int, *more: str) -> None:
        self._spawn(
            port,
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(self.directory), "--dbfilename", f"dump-{port}.rdb"),
            *("--repl-diskless-sync-delay", "0", *more),  # the replica syncs at once
        )

    def _spawn(self, port: int, *args: str) -> None:
        with (self.directory / f"{port}.log").open("wb") as log:
            self.processes[port] = subprocess.Popen(
                [self.binary, *args], stdout=log, stderr=subprocess.STDOUT
            )

    def _wait_synced(self, port: int) -> None:
        replica = self.client(port)
        try:
            wait_for(
                lambda: replica.info("replication").get("master_link_status") == "up",
                15,
                f"the replica on port {port} did not sync with its master",
            )
        finally:
            replica.close()

    def add_sentinel(self, port: int, service: str, password: str) -> None:
        """Start one more sentinel, requiring ``password``, that watches the master
        alone under the name ``service`` (so the others ignore it); :meth:`stop` stops it."""
        config = self.directory / f"sentinel-{port}.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.directory}\nrequirepass {password}\n"
            f"sentinel monitor {service} 127.0.0.1 {self.master_port()} 1\n"
        )
        self._spawn(port, str(config), "--sentinel")
        sentinel = self.client(port, password=password)
        try:
            wait_for(lambda: sentinel.sentinel_master(service), 10, f"sentinel {port} not up")
        finally:
            sentinel.close()

    def client(self, port: int, **options: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, **options)

    def master_port(self) -> int:
        """The port of the master the sentinels name now."""
        sentinel = self.client(self.sentinel_ports[0])
        try:
            _, port = sentinel.sentinel_get_master_addr_by_name(SERVICE)
        finally:
            sentinel.close()
        return int(port)

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (the OS closes its connections at once)."""
        process = self.processes[port]
        process.kill()
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait(timeout=10)

    def _sees_everyone(self, state: dict[str, Any]) -> bool:
        replicas = len(self.data_ports) - 1
        others = len(self.sentinel_ports) - 1
        return (
            int(state.get("num-slaves", 0)) >= replicas
            and int(state.get("num-other-sentinels", 0)) >= others
        )
