"""``lexigram-tasks info --watch`` against a real Redis: in place on a terminal (as
``watch`` does), one table after another into a pipe."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lexigram.tasks.redis import RedisTaskQueue

pytestmark = pytest.mark.timeout(60)

COMMAND = [sys.executable, "-m", "lexigram.tasks.cli"]

APP = """
import os

from lexigram.tasks import TaskProvider
from lexigram.tasks.redis import RedisTaskQueue

provider = TaskProvider(
    queue=RedisTaskQueue(redis_url=os.environ["APP_REDIS_URL"], queue_name=os.environ["QUEUE"])
)
"""

ENTER = "\x1b[?1049h"
LEAVE = "\x1b[?1049l"
HOME = "\x1b[H"
SHOW_CURSOR = "\x1b[?25h"


@pytest.fixture
def app_env(tmp_path: Path, redis_url: str) -> Iterator[dict[str, str]]:
    (tmp_path / "app.py").write_text(APP)
    queue = f"lxwatch-{uuid.uuid4().hex[:10]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEXIGRAM_TASKS_")}
    env.update(APP_REDIS_URL=redis_url, QUEUE=queue, PYTHONUNBUFFERED="1", TERM="xterm")
    yield env

    async def purge() -> None:
        async with RedisTaskQueue(redis_url=redis_url, queue_name=queue) as q:
            await q.purge()

    asyncio.run(purge())


def read_until(fd: int, predicate: object, timeout: float = 30) -> str:
    """Everything read from ``fd`` until ``predicate(text)`` holds."""
    seen = b""
    deadline = time.monotonic() + timeout
    while not predicate(seen.decode(errors="replace")):  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not seen in time; got {seen!r}"
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the other end closed
            break
        seen += chunk
    return seen.decode(errors="replace")


def test_watch_on_a_terminal_redraws_in_place(tmp_path: Path, app_env: dict[str, str]) -> None:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [*COMMAND, "info", "app", "--watch", "0.2"],
        cwd=tmp_path,
        env=app_env,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=subprocess.PIPE,
    )
    os.close(terminal)
    try:
        shown = read_until(controller, lambda text: text.count(HOME) >= 3)
        process.send_signal(signal.SIGINT)
        process.wait(20)
        shown += read_until(controller, lambda text: LEAVE in text)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        assert process.stderr is not None
        errors = process.stderr.read().decode()
        process.stderr.close()
        os.close(controller)
    assert process.returncode == 130, errors
    assert shown.startswith(ENTER)  # the alternate screen, as watch uses
    frames = shown.split(LEAVE)[0].replace(SHOW_CURSOR, "").split(HOME)[1:]
    assert len(frames) >= 3
    for frame in frames:
        assert frame.startswith("Every 0.2s: lexigram-tasks info")
        assert "BACKEND" in frame and app_env["QUEUE"] in frame
        assert frame.endswith("\x1b[J")  # what the last frame left below is cleared
    # back on the normal screen, the last frame stays in view
    after = shown.split(LEAVE, 1)[1]
    assert app_env["QUEUE"] in after and "\x1b[" not in after


def test_watch_into_a_pipe_prints_one_table_after_another(
    tmp_path: Path, app_env: dict[str, str]
) -> None:
    process = subprocess.Popen(
        [*COMMAND, "info", "app", "--watch", "0.2"],
        cwd=tmp_path,
        env=app_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        while sum(line.startswith("BACKEND") for line in lines) < 2:
            lines.append(process.stdout.readline())
        process.send_signal(signal.SIGINT)
        process.wait(20)
        rest = process.stdout.read()  # not communicate(): it would skip what readline buffered
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert process.returncode == 130
    text = "".join(lines) + rest
    assert "\x1b" not in text
    assert text.count(app_env["QUEUE"]) >= 2
