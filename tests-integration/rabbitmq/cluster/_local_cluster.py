"""A three-node RabbitMQ cluster on this machine, started and stopped by the test.

Each node has its own name (``lexi1@localhost`` ...), AMQP port (5681-5683),
distribution port (25681-25683), configuration, data and log directories
under a temporary folder, and all share an Erlang cookie kept there too
(``HOME`` points at it). Management and every other plugin are off. The
shared broker (``rabbit@...`` on 5672) is never addressed: every
``rabbitmqctl`` call names one of these nodes and uses this cookie.
Nodes 2 and 3 join node 1 with ``join_cluster``.

Run as a script, it starts the cluster, prints how long that took, and stops it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SBIN = Path(os.environ.get("RABBITMQ_SBIN", "/usr/lib/rabbitmq/bin"))
AMQP_PORTS = (5681, 5682, 5683)
DIST_PORTS = (25681, 25682, 25683)
COOKIE = "LEXIGRAM-TASKS-TEST-CLUSTER"


@dataclass
class Node:
    name: str
    amqp_port: int
    dist_port: int
    home: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"


class LocalCluster:
    """Three RabbitMQ nodes joined into one cluster, on loopback ports 5681-5683."""

    def __init__(self, base: Path | None = None) -> None:
        self.base = base or Path(tempfile.mkdtemp(prefix="lexigram-rmq-cluster-"))
        self.nodes = [
            Node(f"lexi{i}@localhost", amqp, dist, self.base / f"lexi{i}")
            for i, (amqp, dist) in enumerate(zip(AMQP_PORTS, DIST_PORTS, strict=True), 1)
        ]
        (self.base / ".erlang.cookie").write_text(COOKIE)
        (self.base / ".erlang.cookie").chmod(0o400)
        self.started_in = 0.0

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    # -- starting and stopping -------------------------------------------------

    async def start(self, timeout: float = 120.0) -> None:
        """Start the three nodes, wait until they run, join 2 and 3 to 1."""
        began = time.monotonic()
        for node in self.nodes:
            self._spawn(node)
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(self._await_startup(node) for node in self.nodes))
            for node in self.nodes[1:]:
                await self.ctl(node, "stop_app")
                await self.ctl(node, "reset")
                await self.ctl(node, "join_cluster", self.nodes[0].name)
                await self.ctl(node, "start_app")
            running = await self.ctl(self.nodes[0], "eval", "rabbit_mnesia:cluster_nodes(running).")
            missing = [node.name for node in self.nodes if node.name not in running]
            assert not missing, f"nodes not in the cluster: {missing} (running: {running})"
        self.started_in = time.monotonic() - began

    def _spawn(self, node: Node) -> None:
        node.home.mkdir(parents=True, exist_ok=True)
        (node.home / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{node.amqp_port}\n")
        (node.home / "enabled_plugins").write_text("[].\n")
        (node.home / "rabbitmq-env.conf").write_text("")
        log = (node.home / "server.log").open("wb")
        node.process = subprocess.Popen(
            [str(SBIN / "rabbitmq-server")],
            env=self._env(node),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped as one below
        )
        log.close()

    def _env(self, node: Node) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("RABBITMQ_")}
        env.update(
            HOME=str(self.base),
            RABBITMQ_NODENAME=node.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(node.amqp_port),
            RABBITMQ_DIST_PORT=str(node.dist_port),
            RABBITMQ_CONFIG_FILE=str(node.home / "rabbitmq.conf"),
            RABBITMQ_CONF_ENV_FILE=str(node.home / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(node.home / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(node.home / "mnesia"),
            RABBITMQ_LOG_BASE=str(node.home / "log"),
            RABBITMQ_PID_FILE=str(node.home / "pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_ADDRESS="127.0.0.1",
            # A node that fails to boot writes its crash dump here, not into the cwd.
            ERL_CRASH_DUMP=str(node.home / "erl_crash.dump"),
        )
        return env

    async def _await_startup(self, node: Node) -> None:
        while True:
            assert node.process is not None and node.process.poll() is None, (
                f"{node.name} exited while starting; see {node.home / 'server.log'}"
            )
            code, _ = await self._run(node, "await_startup", "--timeout", "5")
            if code == 0:
                return
            await asyncio.sleep(0.5)

    async def stop_app(self, node: Node) -> None:
        """Stop RabbitMQ on ``node`` (its Erlang VM keeps running): its clients are cut."""
        await self.ctl(node, "stop_app")

    async def start_app(self, node: Node) -> None:
        await self.ctl(node, "start_app")

    async def kill(self, node: Node) -> None:
        """SIGKILL ``node``'s processes (the group this cluster started): a crash, not a stop."""
        assert node.process is not None
        os.killpg(node.process.pid, signal.SIGKILL)
        await asyncio.to_thread(node.process.wait, 30)

    def close(self) -> None:
        """Stop every node this cluster started (by its process group), then delete its files."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                subprocess.run(
                    [str(SBIN / "rabbitmqctl"), "-n", node.name, "stop"],
                    env=self._env(node),
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
        for node in self.nodes:
            process = node.process
            if process is None:
                continue
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        shutil.rmtree(self.base, ignore_errors=True)

    # -- asking the nodes ------------------------------------------------------

    async def ctl(self, node: Node, *args: str) -> str:
        code, out = await self._run(node, *args)
        assert code == 0, f"rabbitmqctl -n {node.name} {' '.join(args)} failed: {out}"
        return out

    async def _run(self, node: Node, *args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            str(SBIN / "rabbitmqctl"),
            "-q",
            "-n",
            node.name,
            *args,
            env=self._env(node),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out, _ = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode(errors="replace")

    async def leader_of(self, queue: str, asking: Node | None = None) -> Node:
        """The node holding the leader of quorum queue ``queue``."""
        out = await self.ctl(asking or self.nodes[0], "list_queues", "name", "leader")
        for line in out.splitlines():
            name, _, leader = line.partition("\t")
            if name == queue:
                return self.node(leader.strip())
        raise AssertionError(f"queue {queue!r} not found: {out}")


async def _main() -> None:
    cluster = LocalCluster()
    try:
        await cluster.start()
        print(f"three-node cluster started in {cluster.started_in:.1f}s")
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
