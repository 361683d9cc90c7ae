"""``lexigram-tasks scheduler`` and ``lexigram-tasks schedule ...`` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from lexigram.tasks.redis import RedisTaskQueue
from lexigram.tasks.testing import eventually

from .conftest import delete_prefix, unique  # type: ignore[import-not-found]

APP = """\
import os
from lexigram.tasks import RedisTaskQueue, TaskProvider, TaskScheduler, scheduled
from lexigram.tasks.scheduler import RedisTemplateStore

url = os.environ["LEXIGRAM_TEST_REDIS_URL"]
provider = TaskProvider(queue=RedisTaskQueue(redis_url=url, queue_name=os.environ["APP_QUEUE"]))

@scheduled(cron="* * * * * *", name="heartbeat")
async def heartbeat() -> None:
    "Beats every second."

@provider.task
def report(region: str) -> str:
    return region

TaskScheduler(provider, store=RedisTemplateStore(url, prefix=os.environ["APP_PREFIX"]))
"""

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest_asyncio.fixture
async def app(tmp_path: Path, redis_url: str) -> AsyncIterator[dict[str, str]]:
    """An application module in a fresh directory; its queue and store removed afterwards."""
    (tmp_path / "schedapp.py").write_text(textwrap.dedent(APP))
    env = {
        **os.environ,
        "LEXIGRAM_TEST_REDIS_URL": redis_url,
        "APP_QUEUE": unique("lxtest-sched-"),
        "APP_PREFIX": unique("lxtest-sched-"),
        "LEXIGRAM_ENV": "test",
        "PYTHONPATH": str(tmp_path),
    }
    yield env
    await delete_prefix(redis_url, env["APP_PREFIX"])
    async with RedisTaskQueue(redis_url=redis_url, queue_name=env["APP_QUEUE"]) as queue:
        await queue.purge()


@pytest.fixture
def cli(app: dict[str, str], tmp_path: Path) -> Run:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lexigram.tasks.cli", *args],
            capture_output=True,
            text=True,
            env=app,
            cwd=tmp_path,
            timeout=60,
        )

    return run


def test_manage_templates_from_the_shell(cli: Run) -> None:
    listed = cli("schedule", "list", "schedapp:provider")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "ORIGIN", "CRON", "TIMEZONE"]
    assert row.split()[:6] == ["heartbeat", "code", "*", "*", "*", "*"]

    added = cli(
        "schedule", "add", "eu-report", "--task", "schedapp.report",
        "--cron", "0 9 * * 1-5", "--timezone", "Europe/Berlin",
        "--kwargs", '{"region": "eu"}', "-A", "schedapp:provider",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "added 'eu-report'" in added.stderr

    # Another process sees it, told apart from the code template.
    listing = json.loads(cli("schedule", "list", "schedapp:provider", "--json").stdout)
    by_name = {t["name"]: t for t in listing}
    assert by_name["eu-report"]["origin"] == "runtime"
    assert by_name["eu-report"]["kwargs"] == {"region": "eu"}
    assert by_name["heartbeat"]["origin"] == "code"

    upcoming = cli("schedule", "next", "eu-report", "-A", "schedapp:provider", "-n", "3", "--json")
    times = json.loads(upcoming.stdout)
    assert len(times) == 3 and all(t.endswith(("+01:00", "+02:00")) for t in times)
    assert all("T09:00:00" in t for t in times)

    assert cli("schedule", "pause", "eu-report", "-A", "schedapp:provider").returncode == 0
    listing = json.loads(cli("schedule", "list", "schedapp:provider", "--json").stdout)
    assert {t["name"]: t["paused"] for t in listing} == {"heartbeat": False, "eu-report": True}
    assert cli("schedule", "resume", "eu-report", "-A", "schedapp:provider").returncode == 0
    removed = cli("schedule", "remove", "eu-report", "-A", "schedapp:provider")
    assert removed.returncode == 0 and "removed 'eu-report'" in removed.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["remove", "heartbeat"], 1, "defined in code"),
        (["pause", "nope"], 2, "no schedule named 'nope'"),
        (["add", "x", "--task", "nope", "--cron", "* * * * *"], 2, "has no handler"),
        (["add", "x", "--task", "schedapp.report", "--cron", "99 * * * *"], 2, "invalid cron"),
    ],
)
def test_mistakes_are_reported_in_one_line(
    cli: Run, args: list[str], code: int, message: str
) -> None:
    result = cli("schedule", *args, "-A", "schedapp:provider")
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def start_scheduler(app: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lexigram.tasks.cli", "scheduler", "schedapp:provider"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=app,
        cwd=cwd,
    )


async def test_scheduler_command_runs_until_sigterm(app: dict[str, str], tmp_path: Path) -> None:
    process = start_scheduler(app, tmp_path)
    try:
        async with RedisTaskQueue(
            redis_url=app["LEXIGRAM_TEST_REDIS_URL"], queue_name=app["APP_QUEUE"]
        ) as queue:

            async def ticks() -> bool:
                assert process.poll() is None, process.communicate()[0]
                return (await queue.counts()).ready >= 2

            await eventually(ticks, timeout=30, interval=0.1)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "scheduler started: 1 template(s) (heartbeat)" in err
    assert "scheduler stopped" in err
