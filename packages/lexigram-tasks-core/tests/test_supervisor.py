"""The supervisor of ``worker --processes N`` with stand-in children (small Python
scripts), and how the command builds the workers' command line. The real thing,
on Redis, is in tests-integration/cli/test_supervisor.py."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from lexigram.tasks import WorkerSettings
from lexigram.tasks.cli import build_parser
from lexigram.tasks.cli.worker import child_command
from lexigram.tasks.config import load_config
from lexigram.tasks.supervisor import RestartPolicy, Supervisor, describe_exit
from lexigram.tasks.testing import eventually

FAST = RestartPolicy(backoff=0.01, backoff_max=0.05, deaths=3, window=60)

# A stand-in worker: says it runs (a file named after its number), then waits for
# the supervisor's end of the pipe to close, and exits with status 0.
OBEDIENT = """
import os, pathlib, sys
pathlib.Path(sys.argv[1], os.environ["LEXIGRAM_TASKS_WORKER_NUMBER"]).write_text(str(os.getpid()))
os.read(int(os.environ["LEXIGRAM_TASKS_SUPERVISOR_FD"]), 1)
"""


def script(text: str, *args: str) -> list[str]:
    return [sys.executable, "-c", text, *args]


def test_processes_auto_is_the_cpu_count_on_the_command_line_and_in_the_file() -> None:
    cpus = os.cpu_count() or 1
    args = build_parser().parse_args(["worker", "app:provider", "--processes", "auto"])
    assert args.processes == cpus
    file = {"tasks": {"backend": {"type": "memory"}, "worker": {"processes": "auto"}}}
    assert load_config(file).worker.processes == cpus
    with pytest.raises(TypeError, match="processes must be an integer, got 'auto'"):
        WorkerSettings(processes="auto")  # type: ignore[arg-type]  # Python: os.cpu_count()


def test_a_worker_runs_the_same_command_with_one_process() -> None:
    argv = ["worker", "app:provider", "--processes", "3", "-c", "7", "--shutdown-timeout"]
    argv += ["2.5", "-b", "a,b", "--log-level", "debug"]
    args = build_parser().parse_args(argv)
    assert child_command(args, ["a", "b"]) == [
        sys.executable,
        "-m",
        "lexigram.tasks.cli",
        "worker",
        "app:provider",
        "--backends",
        "a,b",
        "--concurrency",
        "7",
        "--shutdown-timeout",
        "2.5",
        "--processes",
        "1",
        "--log-level",
        "debug",
    ]
    by_file = build_parser().parse_args(["worker", "--config", "x.yaml", "--tasks-module", "m"])
    assert child_command(by_file, ["default"])[4:] == [
        "--config",
        "x.yaml",
        "--tasks-module",
        "m",
        "--processes",
        "1",
    ]


async def test_a_stop_request_reaches_every_worker_through_the_pipe(tmp_path: Path) -> None:
    supervisor = Supervisor(script(OBEDIENT, str(tmp_path)), 3, shutdown_timeout=5, policy=FAST)
    running = asyncio.create_task(supervisor.serve())
    await eventually(lambda: len(list(tmp_path.iterdir())) == 3, 30, message="not started")
    supervisor.request_stop()
    assert await asyncio.wait_for(running, 30) == 0
    assert supervisor.failures == []


async def test_a_crash_loop_gives_up_with_the_exit_codes() -> None:
    supervisor = Supervisor(script("raise SystemExit(3)"), 2, shutdown_timeout=1, policy=FAST)
    assert await asyncio.wait_for(supervisor.serve(), 60) == 1
    [failure, *_] = supervisor.failures
    assert "died 3 times in a row, each within 60s of its start" in failure
    assert "(exited with code 3, exited with code 3, exited with code 3): giving up" in failure


async def test_a_worker_that_dies_is_started_again(tmp_path: Path) -> None:
    # The first run of worker 1 exits at once; every later run obeys.
    flaky = (
        "import os, pathlib, sys\n"
        "marker = pathlib.Path(sys.argv[1], 'died')\n"
        "if os.environ['LEXIGRAM_TASKS_WORKER_NUMBER'] == '1' and not marker.exists():\n"
        "    marker.write_text('')\n"
        "    os._exit(9)\n" + OBEDIENT
    )
    supervisor = Supervisor(script(flaky, str(tmp_path)), 2, shutdown_timeout=5, policy=FAST)
    running = asyncio.create_task(supervisor.serve())
    await eventually(lambda: len(list(tmp_path.iterdir())) == 3, 30, message="not restarted")
    supervisor.request_stop()
    assert await asyncio.wait_for(running, 30) == 0


async def test_a_worker_still_running_after_the_window_is_killed_and_named(
    tmp_path: Path,
) -> None:
    deaf = OBEDIENT.replace("os.read(", "import time; time.sleep(60); os.read(")
    supervisor = Supervisor(
        script(deaf, str(tmp_path)), 1, shutdown_timeout=0.2, kill_margin=0.3, policy=FAST
    )
    running = asyncio.create_task(supervisor.serve())
    await eventually(lambda: any(tmp_path.iterdir()), 30, message="not started")
    supervisor.request_stop()
    assert await asyncio.wait_for(running, 30) == 1
    [failure] = supervisor.failures
    assert "worker 1 (pid" in failure and "was still running 0.5s after the stop request" in failure


def test_exit_statuses_are_described_as_people_read_them() -> None:
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-9) == "killed by SIGKILL"
