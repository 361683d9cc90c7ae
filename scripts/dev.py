#!/usr/bin/env python3
"""The README's two commands: ``python3 scripts/dev.py demo`` and ``... test``.

Creates ``.venv`` in the repository, installs every package editable with the
development tools at the exact versions of ``requirements-lock.txt``, then
runs the demo or the whole test suite. ``python3 scripts/dev.py lock``
re-resolves ``requirements-dev.txt`` into that lock with uv. Integration
tests need Redis, RabbitMQ and PostgreSQL: when an ``LEXIGRAM_TEST_*``
variable is unset and the service answers on its standard loopback port,
that address is used; otherwise the tests start a container (Docker) or fail
saying how to provide the service.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
LOCK = ROOT / "requirements-lock.txt"

SERVICES = {
    "LEXIGRAM_TEST_REDIS_URL": (6379, "redis://127.0.0.1:6379/0"),
    "LEXIGRAM_TEST_AMQP_URL": (5672, "amqp://guest:guest@127.0.0.1:5672/"),
    "LEXIGRAM_TEST_POSTGRES_DSN": (5432, "postgresql://postgres@127.0.0.1:5432/test"),
}


def install() -> None:
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    print("installing packages (editable) and dev tools from the lock", flush=True)
    subprocess.run([*pip, "-r", str(LOCK)], check=True, cwd=ROOT)


def lock() -> int:
    """Resolve requirements-dev.txt to exact versions for every supported Python."""
    command = [
        str(BIN / "uv"),
        "pip",
        "compile",
        "requirements-dev.txt",
        "--universal",
        "--python-version",
        "3.11",
        "--upgrade",
        "--custom-compile-command",
        "python3 scripts/dev.py lock",
        "--output-file",
        LOCK.name,
    ]
    return subprocess.call(command, cwd=ROOT)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "help"
    if command not in {"demo", "test", "lock"}:
        print(__doc__)
        return 2
    install()
    if command == "lock":
        return lock()
    if command == "demo":
        return subprocess.call([str(BIN / "python"), str(ROOT / "examples" / "demo.py")], cwd=ROOT)
    env = dict(os.environ)
    for var, (port, url) in SERVICES.items():
        if var not in env and port_open(port):
            env[var] = url
    # Most tests wait on servers and worker processes: one pytest process per core
    # (at most 4), a test file at a time each; `-n 0` after the command runs one.
    processes = min(os.cpu_count() or 1, 4)
    parallel = ["-n", str(processes), "--dist", "loadfile"] if processes > 1 else []
    command = [str(BIN / "python"), "-m", "pytest", *parallel, *sys.argv[2:]]
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
