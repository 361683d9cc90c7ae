"""``lexigram-tasks info``: job counts of every backend, once or refreshed."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from typing import Any, TextIO

from lexigram.tasks.cli._app import add_app_arguments, load_app
from lexigram.tasks.cli._errors import EXIT_OK
from lexigram.tasks.cli._output import status
from lexigram.tasks.memory import MemoryTaskQueue
from lexigram.tasks.provider import TaskProvider

DESCRIPTION = """\
Show, for each backend, its queue and how many jobs are ready, delayed
(waiting for their run time or a retry), running (leased to a worker) and
failed (dead-lettered by the backend).
"""

EXAMPLES = """\
examples:
  lexigram-tasks info myapp.tasks:provider
  lexigram-tasks info --config lexigram.yaml --json
  lexigram-tasks info --watch 2
"""

COLUMNS = ("backend", "system", "queue", "ready", "delayed", "running", "failed")


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show ready/delayed/running/failed counts per backend",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    add_app_arguments(parser, positional=True)
    parser.add_argument("--json", action="store_true", help="print JSON (one line per refresh)")
    parser.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=_interval,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C: in place on a terminal, "
        "else one table (or JSON line) after another",
    )
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    provider = load_app(args)
    if any(isinstance(q, MemoryTaskQueue) for q in provider.backends.values()):
        status("note: in-memory backends are empty in a new process; their counts say nothing")
    in_place = bool(args.watch) and not args.json and sys.stdout.isatty()
    screen = Screen(sys.stdout) if in_place else None
    try:
        while True:
            rows = await snapshot(provider)
            if args.json:
                print(json.dumps({"time": round(time.time(), 3), "backends": rows}), flush=True)
            elif screen is not None:
                screen.draw(f"{_heading(args.watch)}\n\n{render(rows)}")
            else:
                if args.watch:
                    print(time.strftime("%Y-%m-%d %H:%M:%S"))
                print(render(rows), flush=True)
            if not args.watch:
                return EXIT_OK
            await asyncio.sleep(args.watch)
    finally:
        if screen is not None:
            screen.close()
        await provider.disconnect()


class Screen:
    """Redraws a frame in place, as ``watch`` does: on the terminal's alternate
    screen, each line overwritten from the top left (no flicker from clearing
    first); on close the normal screen comes back with the last frame printed."""

    ENTER = "\x1b[?1049h\x1b[?25l"  # alternate screen, cursor hidden
    LEAVE = "\x1b[?25h\x1b[?1049l"
    HOME = "\x1b[H"
    CLEAR_LINE_END = "\x1b[K"
    CLEAR_SCREEN_END = "\x1b[J"

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._last: str | None = None

    def draw(self, frame: str) -> None:
        if self._last is None:
            self._stream.write(self.ENTER)
        lines = frame.split("\n")
        body = "\n".join(line + self.CLEAR_LINE_END for line in lines)
        self._stream.write(self.HOME + body + self.CLEAR_SCREEN_END)
        self._stream.flush()
        self._last = frame

    def close(self) -> None:
        if self._last is None:
            return
        self._stream.write(self.LEAVE + self._last + "\n")
        self._stream.flush()
        self._last = None


def _heading(interval: float) -> str:
    return (
        f"Every {interval:g}s: lexigram-tasks info    "
        f"{socket.gethostname()}: {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )


async def snapshot(provider: TaskProvider) -> list[dict[str, Any]]:
    """One row per backend: name, system, queue and counts."""
    counts = await provider.counts()
    return [
        {
            "backend": name,
            "system": provider.backends[name].system,
            "queue": provider.backends[name].queue_name,
            "ready": c.ready,
            "delayed": c.delayed,
            "running": c.running,
            "failed": c.failed,
        }
        for name, c in counts.items()
    ]


def render(rows: list[dict[str, Any]]) -> str:
    """A plain text table."""
    table = [[c.upper() for c in COLUMNS]] + [[str(row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = []
    for line in table:
        cells = [
            cell.ljust(width) if i < 3 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _interval(text: str) -> float:
    value = float(text)
    if value < 0.1:
        raise argparse.ArgumentTypeError(f"must be at least 0.1 seconds, got {value:g}")
    return value
