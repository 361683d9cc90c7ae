"""The ``lexigram-tasks`` command, run for real in subprocesses over the memory backend.

The memory backend lives in one process, so these apps seed their own jobs
when the worker starts (a provider service) and report the queue at exit
(``atexit``): that is how a job returned to the queue at SIGTERM is seen.
The cross-process version of that test runs against Redis in
``tests-integration/cli``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from lexigram.tasks import cli
from lexigram.tasks import plugins as plugins_module

pytestmark = pytest.mark.timeout(60)

COMMAND = [sys.executable, "-m", "lexigram.tasks.cli"]

APP = '''
import asyncio
import atexit
import os

from lexigram.tasks import BackendConnectionError, MemoryTaskQueue, TaskProvider
from lexigram.tasks.protocol import BaseTaskQueue

queue = MemoryTaskQueue("jobs")
provider = TaskProvider(queue=queue, worker_count=2, shutdown_timeout=0.3)


@provider.task(name="quick")
async def quick(i: int) -> int:
    print(f"done {i}", flush=True)
    return i


@provider.task(name="slow")
async def slow() -> None:
    print("slow started", flush=True)
    await asyncio.sleep(60)


class Seed:
    """Enqueues SEED_JOBS when the workers start: the memory queue lives in this process."""

    async def start(self) -> None:
        for name in os.environ.get("SEED_JOBS", "").split():
            if name == "slow":
                await slow.enqueue()
            else:
                await quick.enqueue(int(name))

    async def stop(self) -> None: ...


provider.add_service(Seed())


@atexit.register
def report() -> None:
    counts = asyncio.run(queue.counts())
    print(f"at exit: ready={counts.ready} running={counts.running}", flush=True)
    if counts.ready:
        [delivery] = asyncio.run(queue.dequeue())
        # dequeue counts one more delivery: 1 means the shutdown did not use up an attempt
        print(f"requeued job {delivery.job.task} attempt={delivery.job.attempt}", flush=True)


def make_provider() -> TaskProvider:
    return provider


class Unreachable(BaseTaskQueue):
    queue_name = "x"

    async def connect(self) -> None:
        raise BackendConnectionError("cannot connect to redis://:hunter2@db.internal:6379/0")

    async def disconnect(self) -> None: ...


two = TaskProvider(backends={"default": queue, "spare": MemoryTaskQueue("spare")})
two.task(name="noop")(lambda: None)
down = TaskProvider(queue=Unreachable())
down.task(name="noop")(lambda: None)
empty = TaskProvider(queue=MemoryTaskQueue("empty"))
'''

TASKS_MODULE = """
import os

def register_tasks(provider):
    @provider.task(name="from_module")
    async def from_module() -> None:
        print("from_module ran", flush=True)

    class Seed:
        async def start(self) -> None:
            if os.environ.get("SEED_JOBS"):
                await from_module.enqueue()

        async def stop(self) -> None: ...

    provider.add_service(Seed())
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "tasks_mod.py").write_text(TASKS_MODULE)
    (tmp_path / "jobs.yaml").write_text(
        "tasks:\n  backend:\n    type: memory\n    queue_name: configured\n"
        "  worker:\n    worker_count: 5\n"
    )
    return tmp_path


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEXIGRAM_TASKS_")}
    env.update(LEXIGRAM_ENV="testing", PYTHONUNBUFFERED="1", **extra)
    return env


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(*args: str, cwd: Path, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        cwd=cwd,
        env=environment(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def data_lines(stdout: str) -> list[str]:
    """stdout without what app.py prints at exit."""
    return [line for line in stdout.splitlines() if not line.startswith(("at exit", "requeued"))]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


class Worker:
    """A ``lexigram-tasks worker`` process whose merged output is collected as it comes."""

    def __init__(self, *args: str, cwd: Path, **env: str) -> None:
        self.process = subprocess.Popen(
            [*COMMAND, "worker", *args],
            cwd=cwd,
            env=environment(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline or self.process.poll() is not None:
                time.sleep(0.2)  # let the reader catch up before failing
                if text in self.output:
                    return
                raise AssertionError(f"{text!r} not seen; output so far:\n{self.output}")
            time.sleep(0.02)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = 20) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()


def start_worker(workers: list[Worker], *args: str, cwd: Path, **env: str) -> Worker:
    worker = Worker(*args, cwd=cwd, **env)
    workers.append(worker)
    return worker


# -- help, version, usage ---------------------------------------------------------------


def test_help_of_every_command(app_dir: Path) -> None:
    top = run("--help", cwd=app_dir)
    assert top.returncode == 0
    for command in ("worker", "enqueue", "info"):
        assert command in top.stdout
    assert "Exit codes: 0 ok, 1 failed, 2 usage error" in " ".join(top.stdout.split())
    for command, expected in [
        ("worker", "--backends NAMES"),
        ("worker", "--concurrency"),
        ("enqueue", "--kwargs JSON"),
        ("info", "--watch"),
    ]:
        result = run(command, "--help", cwd=app_dir)
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout and "--config FILE" in result.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("lexigram-tasks")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.startswith("lexigram-tasks 0.")


def test_no_command_prints_usage_and_exits_2(app_dir: Path) -> None:
    result = run(cwd=app_dir)
    assert result.returncode == 2
    assert "usage: lexigram-tasks" in result.stderr


# -- worker ---------------------------------------------------------------------------


def test_worker_runs_jobs_and_stops_on_sigterm(app_dir: Path, workers: list[Worker]) -> None:
    worker = start_worker(workers, "app:provider", "-c", "3", cwd=app_dir, SEED_JOBS="1 2 3")
    for i in (1, 2, 3):
        worker.wait_for(f"done {i}")
    started = next(line for line in worker.lines if "worker started" in line)
    assert "backend default (memory, queue 'jobs'" in started
    assert "concurrency 3" in started and "tasks: quick, slow" in started
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    assert "SIGTERM received: shutting down gracefully" in worker.output
    assert "worker stopped after 3 job(s)" in worker.output
    assert "at exit: ready=0 running=0" in worker.output


def test_sigterm_mid_job_returns_the_job_to_the_queue(app_dir: Path, workers: list[Worker]) -> None:
    worker = start_worker(workers, "app:provider", cwd=app_dir, SEED_JOBS="slow")
    worker.wait_for("slow started")
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    assert "returning 1 running job(s) to the queue" in worker.output
    assert "at exit: ready=1 running=0" in worker.output
    assert "requeued job slow attempt=1" in worker.output  # no attempt used up


def test_sigint_is_graceful_too(app_dir: Path, workers: list[Worker]) -> None:
    worker = start_worker(workers, "app", cwd=app_dir)  # attribute defaults to "provider"
    worker.wait_for("worker started")
    worker.signal(signal.SIGINT)
    assert worker.finish() == 0
    assert "SIGINT received" in worker.output


def test_second_signal_exits_at_once(app_dir: Path, workers: list[Worker]) -> None:
    worker = start_worker(
        workers, "app:provider", "--shutdown-timeout", "60", cwd=app_dir, SEED_JOBS="slow"
    )
    worker.wait_for("slow started")
    worker.signal(signal.SIGTERM)
    worker.wait_for("stopping: waiting up to 60s for 1 running job(s)")
    begun = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 128 + signal.SIGTERM
    assert time.monotonic() - begun < 5
    assert "second SIGTERM: exiting now" in worker.output


def test_worker_from_a_factory_and_only_the_named_backends(
    app_dir: Path, workers: list[Worker]
) -> None:
    worker = start_worker(
        workers, "--app", "app:make_provider", "--backends", "default", cwd=app_dir, SEED_JOBS="7"
    )
    worker.wait_for("done 7")
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    assert "deprecated" not in worker.output

    spare_only = start_worker(workers, "app:two", "-b", "spare", cwd=app_dir)
    spare_only.wait_for("worker started")
    started = next(line for line in spare_only.lines if "worker started" in line)
    assert "backend spare (memory" in started and "default (" not in started
    spare_only.signal(signal.SIGTERM)
    assert spare_only.finish() == 0


def test_the_old_queues_flag_still_works_and_warns_once(
    app_dir: Path, workers: list[Worker]
) -> None:
    worker = start_worker(workers, "app:two", "-Q", "default", "--queues", "spare", cwd=app_dir)
    worker.wait_for("worker started")
    started = next(line for line in worker.lines if "worker started" in line)
    assert "backend default (memory" in started and "spare (memory" in started
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    warnings = [line for line in worker.lines if "-Q/--queues is deprecated" in line]
    assert warnings == ["warning: -Q/--queues is deprecated and will be removed; use -b/--backends"]


def test_worker_from_a_config_file_with_a_tasks_module(
    app_dir: Path, workers: list[Worker]
) -> None:
    worker = start_worker(
        workers, "--config", "jobs.yaml", "--tasks-module", "tasks_mod", cwd=app_dir, SEED_JOBS="1"
    )
    worker.wait_for("from_module ran")
    started = next(line for line in worker.lines if "worker started" in line)
    assert "app config jobs.yaml" in started
    assert "queue 'configured'" in started and "concurrency 5" in started
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0


# -- errors: one line, an exit code, a traceback only with --debug -----------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["worker", "nowhere.tasks:provider"], 3, "cannot import 'nowhere.tasks'"),
        (["worker", "app:missing"], 3, "module 'app' has no attribute 'missing'"),
        (["worker", "app:queue"], 3, "app:queue is a MemoryTaskQueue, not a TaskProvider"),
        (["worker", "not a path"], 2, "is not an import path"),
        (["worker", "--config", "absent.yaml"], 3, "absent.yaml: configuration file not found"),
        (["worker", "--config", "bad.yaml"], 3, "bad.yaml:3: tasks.backend.type: unknown backend"),
        (["worker", "app:down"], 4, "cannot connect to redis://:***@db.internal:6379/0"),
        (["worker"], 2, "no application given"),
        (["worker", "--config", "jobs.yaml"], 3, "no tasks are registered (config jobs.yaml)"),
        (["worker", "app:empty"], 3, "register them with @provider.task in the module"),
        (["worker", "app", "--config", "jobs.yaml"], 2, "not both"),
        (["worker", "app", "-Q", "default,nope"], 2, "unknown backend 'nope' in --queues"),
        (["worker", "app", "-b", "default,nope"], 2, "unknown backend 'nope' in --backends"),
        (["info", "app:down"], 4, "redis://:***@db.internal"),
        (["enqueue", "quick", "-A", "app", "--args", "{"], 2, "--args is not valid JSON"),
        (["enqueue", "quick", "-A", "app", "--args", "{}"], 2, "--args must be a JSON array"),
        (["enqueue", "quick", "-A", "app", "--kwargs", "[]"], 2, "--kwargs must be a JSON object"),
        (["enqueue", "nosuch", "-A", "app"], 2, "no task named 'nosuch' is registered"),
        (["enqueue", "quick", "-A", "app", "--priority", "12"], 2, "priority must be between"),
        (["enqueue", "quick", "-A", "app", "--backend", "x"], 2, "unknown backend 'x'"),
    ],
)
def test_errors_are_one_line_with_an_exit_code(
    app_dir: Path, args: list[str], code: int, message: str
) -> None:
    (app_dir / "bad.yaml").write_text("tasks:\n  backend:\n    type: kafka\n")
    result = run(*args, cwd=app_dir)
    assert result.returncode == code, result.stderr
    [line] = error_lines(result.stderr)
    assert message in line
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_worker_without_tasks_says_how_to_register_them(app_dir: Path) -> None:
    result = run("worker", "--config", "jobs.yaml", cwd=app_dir)
    assert result.returncode == 3
    [line] = error_lines(result.stderr)
    assert "APP (lexigram-tasks worker myapp.tasks:provider)" in line
    assert "--tasks-module MODULE[:FUNCTION]" in line and "'register_tasks' by default" in line
    assert "worker started" not in result.stderr


def test_a_configuration_error_lists_every_problem_one_per_line(app_dir: Path) -> None:
    (app_dir / "two.yaml").write_text(
        "tasks:\n  backend: {type: memory, queue: x}\n  result_store: {type: memory, size: 1}\n"
    )
    result = run("info", "--config", "two.yaml", cwd=app_dir)
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        "error: 2 configuration errors:",
        "  two.yaml:2: tasks.backend.queue: unknown key for type 'memory'; did you mean "
        "'queue_name'? (accepted: queue_name, max_finished)",
        "  two.yaml:3: tasks.result_store.size: unknown key for type 'memory' "
        "(accepted: ttl, max_entries)",
    ]


def test_enqueue_wait_without_a_shared_result_store_enqueues_nothing(app_dir: Path) -> None:
    # app.py's provider has the in-memory result store a memory backend gets by default
    result = run("enqueue", "quick", "-A", "app", "--args", "[1]", "--wait", "5", cwd=app_dir)
    assert result.returncode == 3, result.stderr
    [line] = error_lines(result.stderr)
    assert "--wait cannot get a result: the result store is in memory" in line
    assert "Nothing was enqueued" in line
    assert result.stdout.splitlines() == ["at exit: ready=0 running=0"]  # no job id either


def test_debug_shows_the_traceback(app_dir: Path) -> None:
    result = run("--debug", "worker", "app:down", cwd=app_dir)
    assert result.returncode == 4
    assert "Traceback (most recent call last)" in result.stderr
    assert "BackendConnectionError" in result.stderr
    assert "hunter2" not in result.stderr
    after = run("worker", "app:down", "--debug", cwd=app_dir)  # after the command works too
    assert "Traceback" in after.stderr


def test_an_import_error_inside_the_app_is_reported(app_dir: Path) -> None:
    (app_dir / "broken.py").write_text("import not_installed_anywhere\n")
    result = run("worker", "broken", cwd=app_dir)
    assert result.returncode == 3
    [line] = error_lines(result.stderr)
    assert "importing 'broken' failed: ModuleNotFoundError" in line


# -- enqueue and info ---------------------------------------------------------------------


def test_enqueue_prints_the_job_and_warns_about_memory(app_dir: Path) -> None:
    result = run(
        "enqueue", "quick", "-A", "app", "--args", "[5]", "--delay", "1", "--json", cwd=app_dir
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout.splitlines()[0])
    assert doc["task"] == "quick" and doc["queue"] == "jobs" and doc["backend"] == "default"
    assert len(doc["id"]) == 32
    assert "is in memory: the job lives only in this process" in result.stderr
    plain = run("enqueue", "quick", "-A", "app", "--args", "[5]", cwd=app_dir)
    assert len(plain.stdout.splitlines()[0]) == 32  # just the id, for $(...)


def test_info_table_json_and_default_config_file(app_dir: Path) -> None:
    table = run("info", "app", cwd=app_dir)
    assert table.returncode == 0, table.stderr
    header, row = data_lines(table.stdout)
    assert header.split() == ["BACKEND", "SYSTEM", "QUEUE", "READY", "DELAYED", "RUNNING", "FAILED"]
    assert row.split() == ["default", "memory", "jobs", "0", "0", "0", "0"]
    (app_dir / "lexigram.yaml").write_text((app_dir / "jobs.yaml").read_text())
    as_json = run("info", "--json", cwd=app_dir)  # ./lexigram.yaml is the default
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["backends"] == [
        {
            "backend": "default",
            "system": "memory",
            "queue": "configured",
            "ready": 0,
            "delayed": 0,
            "running": 0,
            "failed": 0,
        }
    ]
    from_env = run("info", "--json", cwd=app_dir, LEXIGRAM_TASKS_APP="app:provider")
    assert json.loads(data_lines(from_env.stdout)[0])["backends"][0]["queue"] == "jobs"


def test_info_watch_refreshes_until_interrupted(app_dir: Path) -> None:
    process = subprocess.Popen(
        [*COMMAND, "info", "app", "--json", "--watch", "0.1"],
        cwd=app_dir,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as at a terminal: a suite started in the background of a
        # non-interactive shell has SIGINT ignored, which a child would inherit
        # (and rightly keep ignoring).
        preexec_fn=_default_sigint,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline(), process.stdout.readline()]
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    times = [json.loads(line)["time"] for line in data_lines("".join(lines) + rest)]
    assert len(times) >= 2 and times == sorted(times)


# -- plugins -------------------------------------------------------------------------------


PLUGIN = """
def register(subparsers):
    parser = subparsers.add_parser("hello", help="say hello")
    parser.add_argument("--name", default="world")
    parser.set_defaults(func=run)


async def run(args):
    print(f"hello {args.name}")
    return 7
"""


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[EntryPoint]]:
    (tmp_path / "hello_plugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    installed: list[EntryPoint] = []

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        assert group == cli.PLUGIN_GROUP
        return installed

    monkeypatch.setattr(plugins_module, "entry_points", fake_entry_points)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield installed
    root.setLevel(level)
    root.handlers[:] = handlers


def test_plugins_add_commands_through_the_entry_point_group(
    plugins: list[EntryPoint], capsys: pytest.CaptureFixture[str]
) -> None:
    plugins.append(EntryPoint("hello", "hello_plugin:register", cli.PLUGIN_GROUP))
    assert cli.main(["hello", "--name", "tasks"]) == 7  # an async func is awaited
    assert capsys.readouterr().out == "hello tasks\n"
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "say hello" in capsys.readouterr().out


def test_a_broken_plugin_warns_and_the_rest_still_works(
    plugins: list[EntryPoint], capsys: pytest.CaptureFixture[str]
) -> None:
    plugins.append(EntryPoint("broken", "no_such_module:register", cli.PLUGIN_GROUP))
    plugins.append(EntryPoint("hello", "hello_plugin:register", cli.PLUGIN_GROUP))
    assert cli.main(["hello"]) == 7
    captured = capsys.readouterr()
    assert "warning: CLI plugin 'broken' (no_such_module:register) could not be loaded" in (
        captured.err
    )
    assert captured.out == "hello world\n"
