"""200 workflows of 20 steps on PostgreSQL while workers are SIGKILLed at random: every
workflow finishes, its callback is enqueued once with the right inputs, and no step
or callback runs again once a run of it finished (see workflow_crash_cases.check)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import workflow_crash_app as app
import workflow_crash_cases as cases


async def test_killed_workers_neither_lose_nor_double_a_callback(
    postgres_dsn: str, pg_schema: str, redis_url: str, tmp_path: Path
) -> None:
    queue = f"lxwfcrash-{uuid.uuid4().hex[:10]}"
    outcome = await app.run(
        "postgres", postgres_dsn, queue, pg_schema, redis_url, queue, log_dir=tmp_path
    )
    figures = cases.check(outcome, 200)
    print(f"postgres: {figures}, {outcome.seconds:.1f}s")
    assert outcome.kills >= 7  # a wave of workflows is sent after each kill
