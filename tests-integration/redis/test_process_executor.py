"""The process executor in a real worker process on Redis: results, a timeout whose
child is killed before the retry, a crash that fails only its job, children gone
after a graceful stop."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
from pathlib import Path

import pytest

from lexigram.tasks import TaskFailedError
from lexigram.tasks.redis import RedisTaskQueue

HERE = Path(__file__).parent


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_process_tasks_in_a_redis_worker(
    redis_url: str, queue: RedisTaskQueue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEXIGRAM_PX_REDIS_URL", redis_url)
    monkeypatch.setenv("LEXIGRAM_PX_QUEUE", queue.queue_name)
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.delitem(sys.modules, "_process_executor_app", raising=False)
    app = importlib.import_module("_process_executor_app")  # its tasks, on this test's queue
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    log = tmp_path / "worker.log"
    command = ["-m", "lexigram.tasks.cli", "worker", "_process_executor_app:provider"]
    with log.open("wb") as out:
        worker = await asyncio.create_subprocess_exec(sys.executable, *command, env=env, stderr=out)
    client = app.provider
    try:
        await client.connect()
        add = [await client.enqueue("px.add", i, 1) for i in range(12)]
        sums = [await h.result(timeout=60) for h in add]
        assert [s["sum"] for s in sums] == [i + 1 for i in range(12)]
        children = {s["pid"] for s in sums}
        assert worker.pid not in children
        assert len(children) >= 3  # max_jobs_per_child=5 replaced them

        crashed = await client.enqueue("px.exit_now", 7)
        retried = await client.enqueue("px.hang_once", str(tmp_path / "first.pid"))
        after = await client.enqueue("px.add", 40, 2)
        with pytest.raises(TaskFailedError) as info:
            await crashed.result(timeout=60)
        assert info.value.error_type == "WorkerProcessCrashed"
        assert "exit code 7" in info.value.error_message
        assert await retried.result(timeout=60) == {"first_alive": False, "attempt": 2}
        last = await after.result(timeout=60)
        assert last["sum"] == 42
    finally:
        await client.stop()
        worker.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(worker.wait(), 60)
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
    assert code == 0, log.read_text()
    assert not alive(last["pid"]), "a child outlived its worker"
