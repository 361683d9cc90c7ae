"""mypy checks the arguments of workflow signatures: ``task.s(...)`` takes the
task's parameters, or all but the first (a chained step, which gets the previous
result there); ``task.si(...)`` takes exactly the task's parameters."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SNIPPET = """\
from lexigram.tasks import MemoryTaskQueue, TaskProvider, chain, group

provider = TaskProvider(queue=MemoryTaskQueue())


@provider.task()
async def add(n: int, m: int) -> int:
    return n + m


@provider.task()
async def total(numbers: list[int]) -> int:
    return sum(numbers)


flow = chain(add.s(1, 2), add.s(3), group(add.s(4), add.s(n=1, m=2)), total.s(), add.si(1, 2))
reveal_type(add.s(1, 2))
wrong_type = add.s("x")  # line 18
wrong_second = add.s(1, "y")  # line 19
too_many = add.s(1, 2, 3)  # line 20
wrong_list = total.s(["1"])  # line 21
immutable_short = add.si(1)  # line 22
unknown_keyword = add.s(k=1)  # line 23
"""


def test_mypy_checks_signature_arguments(tmp_path: Path) -> None:
    snippet = tmp_path / "flows.py"
    snippet.write_text(SNIPPET)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(snippet)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout
    errors = {int(n) for n in re.findall(r"flows\.py:(\d+): error", out)}
    assert errors == {18, 19, 20, 21, 22, 23}, out
    assert 'Revealed type is "lexigram.tasks.workflows._canvas.Signature[int]"' in out, out
