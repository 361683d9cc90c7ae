"""What a RabbitMQ user sees in the logs and errors when the connection fails.

The connections go through a TCP proxy run by the test, so that a test can
cut its own connection, keep the broker unreachable for a while, and bring it
back, without touching the shared broker or anyone else's connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from lexigram.tasks import TaskProvider
from lexigram.tasks.errors import BackendConnectionError, ConfigurationError
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue
from lexigram.tasks.testing import eventually

CLIENT_LIBRARIES = ("aiormq", "aio_pika")


class Proxy:
    """A TCP proxy to the broker that the test can take down and bring back on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening and drop every proxied connection abruptly."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.ensure_future(_pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    sink.transport.abort()


@pytest_asyncio.fixture
async def proxy(amqp_url: str) -> AsyncIterator[Proxy]:
    parts = urlsplit(amqp_url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    yield proxy
    await proxy.cut()


def _via(amqp_url: str, port: int) -> str:
    parts = urlsplit(amqp_url)
    return parts._replace(netloc=f"{parts.netloc.rsplit('@', 1)[0]}@127.0.0.1:{port}").geturl()


def _client_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What aio-pika and aiormq logged at INFO or above."""
    return [
        f"{r.name} {r.levelname}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith(CLIENT_LIBRARIES) and r.levelno >= logging.INFO
    ]


def _ours(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "lexigram.tasks.rabbitmq" and r.levelno == logging.WARNING
        if words in r.getMessage()
    ]


async def test_each_outage_is_one_warning_and_its_recovery_one_more(
    amqp_url: str, proxy: Proxy, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    queue = RabbitMQTaskQueue(
        amqp_url=_via(amqp_url, proxy.port),
        queue_name=queue_name,
        reconnect_interval=0.1,
        connection_name=f"{queue_name}-logs",
    )
    provider = TaskProvider(queue=queue, worker_count=2, poll_interval=0.2)
    ran: list[int] = []

    @provider.task(name="note")
    async def note(n: int) -> None:
        ran.append(n)

    async with provider:
        for cut in range(1, 6):
            await proxy.cut()
            await eventually(lambda n=cut: len(_ours(caplog, " lost (")) == n or None, timeout=10)
            if cut % 2 == 0:
                # A longer outage: several reconnect attempts fail meanwhile.
                await asyncio.sleep(0.5)
            await proxy.start()
            await eventually(lambda n=cut: len(_ours(caplog, " restored after ")) == n or None)
            await note.enqueue(cut)
            await eventually(lambda n=cut: n in ran or None, timeout=10)
        await queue.delete_topology()

    assert len(_ours(caplog, " lost (")) == 5
    assert len(_ours(caplog, " restored after ")) == 5
    assert _client_records(caplog) == []
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and not (
            r.name == "lexigram.tasks.rabbitmq"
            and ("lost (" in r.message or "restored" in r.message)
        )
    ]
    assert warnings == []
    lost = _ours(caplog, " lost (")[0]
    assert f"{queue_name}-logs" in lost and "guest:***@" in lost


async def test_an_unreachable_broker_is_one_error_naming_the_url_and_the_cause(
    amqp_url: str, proxy: Proxy, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await proxy.cut()  # nothing listens on its port now
    url = _via(amqp_url, proxy.port).replace("guest:guest@", "guest:s3cret@")
    queue = RabbitMQTaskQueue(amqp_url=url, queue_name=queue_name, connect_timeout=5)
    with pytest.raises(BackendConnectionError) as failed:
        await queue.connect()
    message = str(failed.value)
    assert f"guest:***@127.0.0.1:{proxy.port}" in message
    assert "Connect call failed" in message and "s3cret" not in message
    assert _client_records(caplog) == []


def test_a_worker_on_an_unreachable_broker_says_so_in_one_line_and_exits_4(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    url = f"amqp://guest:s3cret@127.0.0.1:{unused_tcp_port}/"
    (tmp_path / "unreachable_app.py").write_text(
        textwrap.dedent(
            f"""
            from lexigram.tasks import TaskProvider
            from lexigram.tasks.rabbitmq import RabbitMQTaskQueue

            provider = TaskProvider(queue=RabbitMQTaskQueue(amqp_url={url!r}))

            @provider.task(name="noop")
            async def noop() -> None:
                pass
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "lexigram.tasks.cli", "worker", "unreachable_app:provider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 4, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Reconnecting" not in done.stderr
    assert "s3cret" not in done.stderr
    [failure] = [line for line in lines if "guest:***@" in line]
    assert "Connect call failed" in failure
    assert not any(" ERROR " in line or "Traceback" in line for line in lines), lines


async def test_a_missing_vhost_is_named(amqp_url: str, queue_name: str) -> None:
    url = amqp_url.rstrip("/") + "/lexigram-no-such-vhost"
    queue = RabbitMQTaskQueue(amqp_url=url, queue_name=queue_name, connect_timeout=5)
    with pytest.raises(ConfigurationError, match="vhost 'lexigram-no-such-vhost' does not exist"):
        await queue.connect()


@pytest.mark.parametrize("url", ["http://guest:s3cret@127.0.0.1:5672/", "127.0.0.1:5672", ""])
def test_a_url_that_is_not_amqp_is_refused_at_construction(url: str) -> None:
    with pytest.raises(ConfigurationError, match="must start with amqp:// or amqps://") as refused:
        RabbitMQTaskQueue(amqp_url=url)
    assert "s3cret" not in str(refused.value)
    RabbitMQTaskQueue.validate_url("amqps://guest:guest@broker.example:5671/prod")
    with pytest.raises(ConfigurationError):
        RabbitMQTaskQueue.validate_url("redis://localhost:6379/0")
