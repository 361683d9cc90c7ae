"""A PostgreSQL primary and a streaming standby on loopback, for the failover tests.

Two throw-away clusters under one temporary directory: the primary made by
``initdb``, the standby by ``pg_basebackup -R`` from it. Both trust every
loopback connection and are stopped (by ``pg_ctl``, which signals the
postmaster's PID) and deleted by :meth:`ReplicatedPair.close`. The server
on port 5432 is never touched. PostgreSQL refuses to run as root, so when
the tests run as root every command runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

#: Ports of the primary and the standby (the range this test may use is 5433-5439).
PRIMARY_PORT = 5433
STANDBY_PORT = 5434


def _bindir() -> Path:
    """Where initdb, pg_ctl and pg_basebackup are: ``LEXIGRAM_TEST_PG_BINDIR``,
    else the newest ``/usr/lib/postgresql/<version>/bin`` (Debian, Ubuntu)."""
    given = os.environ.get("LEXIGRAM_TEST_PG_BINDIR")
    candidates = [Path(given)] if given else []
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    candidates += reversed(found)
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_basebackup").exists():
            return candidate
    pytest.fail(
        "the failover tests run their own PostgreSQL servers: install the server "
        "(apt-get install postgresql) or set LEXIGRAM_TEST_PG_BINDIR to the directory "
        "holding initdb, pg_ctl and pg_basebackup",
        pytrace=False,
    )


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


class Node:
    """One cluster: its data directory, port and ``pg_ctl``."""

    def __init__(self, pair: ReplicatedPair, name: str, port: int) -> None:
        self.pair = pair
        self.name = name
        self.port = port
        self.datadir = pair.root / name

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self.pair.run("pg_ctl", "-D", self.datadir, "-l", f"{self.datadir}.log", "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast`` (clients are disconnected, WAL is sent to the
        standby first) or ``-m immediate`` (the postmaster is killed, as in a crash)."""
        self.pair.run("pg_ctl", "-D", self.datadir, "-m", mode, "-w", "stop")

    def promote(self) -> None:
        self.pair.run("pg_ctl", "-D", self.datadir, "-w", "promote")

    def sql(self, statement: str) -> str:
        """Run one statement with psql; its output, unaligned."""
        return self.pair.run(
            "psql",
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            statement,
        ).strip()


class ReplicatedPair:
    """A primary on :data:`PRIMARY_PORT` streaming to a standby on :data:`STANDBY_PORT`."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="lexigram-pg-failover-"))
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            os.chown(self.root, pwd.getpwnam("postgres").pw_uid, -1)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        self.primary = Node(self, "primary", PRIMARY_PORT)
        self.standby = Node(self, "standby", STANDBY_PORT)

    @property
    def dsn(self) -> str:
        """Both servers in one DSN, the primary first (asyncpg's multi-host form)."""
        return f"postgresql://postgres@127.0.0.1:{PRIMARY_PORT},127.0.0.1:{STANDBY_PORT}/postgres"

    def run(self, program: str, *args: str | Path) -> str:
        """One of PostgreSQL's programs, as the postgres user; its output."""
        return self.run_tool(str(self.bindir / program), *args)

    def run_tool(self, program: str, *args: str | Path) -> str:
        command = [*self._as_postgres, program, *map(str, args)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def create(self) -> None:
        """Make and start both servers; return once the standby streams."""
        for port in (PRIMARY_PORT, STANDBY_PORT):
            if not _port_free(port):
                pytest.fail(f"port {port} is taken: the failover tests need 5433 and 5434")
        self.run(
            "initdb",
            "-D",
            self.primary.datadir,
            "--auth=trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        settings = [
            f"port = {PRIMARY_PORT}",
            "listen_addresses = '127.0.0.1'",
            "wal_level = replica",
            "max_connections = 200",
            "fsync = off",  # a test cluster: commits need not survive a power cut
        ]
        with (self.primary.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(settings) + "\n")
        self._set_socket_directory(self.primary)
        self.primary.start()
        self.run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(PRIMARY_PORT),
            "-U",
            "postgres",
            "-D",
            self.standby.datadir,
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        )
        with (self.standby.datadir / "postgresql.conf").open("a") as conf:
            # Promoted, it must not wait for a standby of its own.
            conf.write(f"port = {STANDBY_PORT}\nsynchronous_standby_names = ''\n")
        self.standby.start()
        self._wait_streaming()

    def clone(self, *, synchronous: bool = False) -> ReplicatedPair:
        """A new pair copied from this one, which is stopped for the copy (cheaper
        than ``initdb`` and ``pg_basebackup`` for every test). The copy is started.

        ``synchronous``: commits wait until the standby has flushed them
        (``synchronous_standby_names = '*'``), so a crash of the primary loses
        no commit; otherwise replication is asynchronous (PostgreSQL's default).
        """
        for node in (self.primary, self.standby):  # the primary first: the standby gets all
            if (node.datadir / "postmaster.pid").exists():
                node.stop("fast")
        copy = ReplicatedPair()
        for node, twin in ((self.primary, copy.primary), (self.standby, copy.standby)):
            copy.run_tool("cp", "-a", node.datadir, twin.datadir)
            copy._set_socket_directory(twin)
        if synchronous:
            with (copy.primary.datadir / "postgresql.conf").open("a") as conf:
                conf.write("synchronous_standby_names = '*'\n")
        try:
            copy.primary.start()
            copy.standby.start()
            copy._wait_streaming()
        except BaseException:
            copy.close()
            raise
        return copy

    def _set_socket_directory(self, node: Node) -> None:
        with (node.datadir / "postgresql.conf").open("a") as conf:
            conf.write(f"unix_socket_directories = '{self.root}'\n")

    def _wait_streaming(self) -> None:
        self.wait_for(
            lambda: (
                self.primary.sql(
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
                )
                == "1"
            ),
            "the standby to stream from the primary",
        )

    def caught_up(self) -> bool:
        """Whether the standby has replayed everything the primary wrote so far."""
        written = self.primary.sql("SELECT pg_current_wal_lsn()")
        lag = self.standby.sql(f"SELECT pg_wal_lsn_diff('{written}', pg_last_wal_replay_lsn())")
        return float(lag) <= 0

    def make_read_only(self) -> None:
        """What a switchover does first: the primary refuses writes from now on."""
        self.primary.sql("ALTER SYSTEM SET default_transaction_read_only = on")
        self.primary.sql("SELECT pg_reload_conf()")

    @staticmethod
    def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for {what}")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop whatever still runs (immediately) and delete both clusters."""
        for node in (self.primary, self.standby):
            pid_file = node.datadir / "postmaster.pid"
            if pid_file.exists():
                with contextlib.suppress(RuntimeError):  # already stopped: a leftover pid file
                    node.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
