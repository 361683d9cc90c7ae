"""``lexigram-tasks dlq list|show|replay|purge`` against an application on Redis."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lexigram.tasks.cli import main
from lexigram.tasks.dlq import FailureFilter, FailureRecord, RedisDeadLetterStorage
from lexigram.tasks.dlq.testing import T0, make_record
from lexigram.tasks.redis import RedisTaskQueue


class App:
    """A throw-away application module whose provider keeps its DLQ in Redis."""

    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        self.module = f"dlq_cli_app_{uuid.uuid4().hex[:8]}"
        self.queue_name = f"dlq-cli-{uuid.uuid4().hex[:8]}"
        self.prefix = f"test-dlq-cli:{uuid.uuid4().hex}"
        self.redis_url = redis_url
        self.target = f"{self.module}:provider"
        (tmp_path / f"{self.module}.py").write_text(
            textwrap.dedent(
                f"""
                from lexigram.tasks import DeadLetterQueue, RedisTaskQueue, TaskProvider
                from lexigram.tasks.dlq import RedisDeadLetterStorage

                dlq = DeadLetterQueue(RedisDeadLetterStorage({redis_url!r}, prefix={self.prefix!r}))
                provider = TaskProvider(
                    queue=RedisTaskQueue({redis_url!r}, queue_name={self.queue_name!r}),
                    dead_letter=dlq,
                    strict=False,
                )
                """
            )
        )

    def storage(self) -> RedisDeadLetterStorage:
        return RedisDeadLetterStorage(self.redis_url, prefix=self.prefix)

    def put(self, *records: FailureRecord) -> None:
        async def put() -> None:
            async with _connected(self.storage()) as storage:
                for record in records:
                    await storage.put(record)

        asyncio.run(put())

    def ids(self) -> list[str]:
        async def ids() -> list[str]:
            async with _connected(self.storage()) as storage:
                return [r.id for r in await storage.list(FailureFilter(), limit=None)]

        return asyncio.run(ids())

    def ready(self) -> int:
        async def ready() -> int:
            async with RedisTaskQueue(self.redis_url, queue_name=self.queue_name) as queue:
                return (await queue.counts()).ready

        return asyncio.run(ready())

    def cleanup(self) -> None:
        async def cleanup() -> None:
            async with _connected(self.storage()) as storage:
                await storage.purge(FailureFilter())
            async with RedisTaskQueue(self.redis_url, queue_name=self.queue_name) as queue:
                await queue.purge()

        asyncio.run(cleanup())


class _connected:
    def __init__(self, storage: RedisDeadLetterStorage) -> None:
        self.storage = storage

    async def __aenter__(self) -> RedisDeadLetterStorage:
        await self.storage.connect()
        return self.storage

    async def __aexit__(self, *exc: object) -> None:
        await self.storage.disconnect()


@pytest.fixture
def app(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    made = App(tmp_path, redis_url)
    yield made
    made.cleanup()


def records(app: App) -> list[FailureRecord]:
    made = [
        make_record(task="mail.send", queue=app.queue_name, error_type="SMTPError", failed_at=T0),
        make_record(
            task="mail.send", queue=app.queue_name, error_type="KeyError", failed_at=T0 + 60
        ),
        make_record(
            task="pay.charge", queue=app.queue_name, error_type="KeyError", failed_at=T0 + 120
        ),
        make_record(task=None, queue=app.queue_name, payload=b"garbage", failed_at=T0 + 180),
    ]
    app.put(*made)
    return made


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_filters_pages_and_prints_json(app: App, capsys: pytest.CaptureFixture[str]) -> None:
    made = records(app)
    code, out, err = run(capsys, "dlq", "list", "-A", app.target, "--json")
    assert code == 0
    assert [r["id"] for r in json.loads(out)] == [r.id for r in made]
    assert "1-4 of 4 record(s)" in err

    code, out, _ = run(
        capsys, "dlq", "list", "-A", app.target, "--json", "--error-type", "KeyError"
    )
    assert [r["id"] for r in json.loads(out)] == [made[1].id, made[2].id]
    since = "2023-11-14T22:14:20+00:00"  # T0 + 60
    code, out, _ = run(
        capsys, "dlq", "list", "-A", app.target, "--json", "--task", "mail.send", "--since", since
    )
    assert [r["id"] for r in json.loads(out)] == [made[1].id]
    code, out, err = run(capsys, "dlq", "list", "-A", app.target, "--limit", "2", "--offset", "1")
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "FAILED",
        "AT",
        "TASK",
        "QUEUE",
        "ERROR",
        "ATTEMPTS",
        "MESSAGE",
    ]
    assert [line.split()[0] for line in lines[1:]] == [made[1].id, made[2].id]
    assert "2-3 of 4" in err


def test_show_prints_the_traceback_and_the_job(
    app: App, capsys: pytest.CaptureFixture[str]
) -> None:
    made = records(app)
    code, out, _ = run(capsys, "dlq", "show", made[0].id, "-A", app.target)
    assert code == 0
    assert "error:       SMTPError: boom" in out
    assert "Traceback (most recent call last)" in out
    assert '"task": "mail.send"' in out
    code, out, _ = run(capsys, "dlq", "show", made[0].id, "-A", app.target, "--json")
    assert FailureRecord.from_dict(json.loads(out)) == made[0]
    code, _, err = run(capsys, "dlq", "show", "nope", "-A", app.target)
    assert code == 1
    assert "no record 'nope'" in err


def test_replay_by_id_and_by_filter(app: App, capsys: pytest.CaptureFixture[str]) -> None:
    made = records(app)
    code, out, _ = run(capsys, "dlq", "replay", made[0].id, "-A", app.target)
    assert code == 0
    assert out.startswith(f"replayed {made[0].id} as job ")
    assert app.ready() == 1
    code, out, err = run(
        capsys, "dlq", "replay", "-A", app.target, "--error-type", "KeyError", "--json"
    )
    assert code == 0
    assert sorted(json.loads(out)["replayed"]) == sorted([made[1].id, made[2].id])
    assert app.ready() == 3
    assert app.ids() == [made[3].id]
    code, out, err = run(capsys, "dlq", "replay", "-A", app.target, "--all")
    assert code == 1  # the malformed message cannot be replayed, and says so
    assert f"not replayed {made[3].id}" in out
    assert app.ids() == [made[3].id]
    code, _, err = run(capsys, "dlq", "replay", "-A", app.target)
    assert code == 2
    assert "say which records" in err


def test_purge_asks_first_and_honours_filters(
    app: App, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    made = records(app)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # piped input is not an answer
    code, _, err = run(capsys, "dlq", "purge", "-A", app.target, "--all")
    assert code == 2, err  # no terminal to ask on
    assert "--yes" in err
    assert len(app.ids()) == 4

    monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
    code, _, err = run(capsys, "dlq", "purge", "-A", app.target, "--task", "mail.send")
    assert code == 1
    assert "delete 2 record(s) (task=mail.send) for good? [y/N]" in err
    assert len(app.ids()) == 4

    monkeypatch.setattr(sys, "stdin", _Terminal("y\n"))
    code, _, _ = run(capsys, "dlq", "purge", "-A", app.target, "--task", "mail.send")
    assert code == 0
    assert app.ids() == [made[2].id, made[3].id]

    code, out, _ = run(capsys, "dlq", "purge", made[3].id, "-A", app.target, "--yes", "--json")
    assert json.loads(out) == {"purged": 1}
    assert app.ids() == [made[2].id]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_storage_url_without_an_application_and_passwords_stay_hidden(
    app: App, capsys: pytest.CaptureFixture[str]
) -> None:
    made = records(app)
    code, out, _ = run(
        capsys, "dlq", "list", "--storage-url", app.redis_url, "--prefix", app.prefix, "--json"
    )
    assert code == 0
    assert len(json.loads(out)) == len(made)
    code, _, err = run(capsys, "dlq", "list", "--storage-url", "redis://:hunter2@127.0.0.1:1/0")
    assert code == 4
    assert "hunter2" not in err
    assert "***" in err


def test_the_console_command_runs_the_plugin(app: App, tmp_path: Path) -> None:
    made = records(app)
    done = subprocess.run(
        [sys.executable, "-m", "lexigram.tasks.cli", "dlq", "list", "-A", app.target, "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in json.loads(done.stdout)] == [r.id for r in made]
