"""The worker-edge scenarios of ``redis/test_worker_edges.py``, on PostgreSQL."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from lexigram.tasks.protocol import TaskQueueProtocol


def _load_scenarios() -> Any:
    path = Path(__file__).resolve().parents[1] / "redis" / "test_worker_edges.py"
    spec = importlib.util.spec_from_file_location("_worker_edge_scenarios", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


edges = _load_scenarios()


@pytest.fixture
def pg_spec(postgres_dsn: str, pg_schema: str) -> dict[str, Any]:
    name = f"edges_{uuid.uuid4().hex[:8]}"
    options = {"postgres_dsn": postgres_dsn, "queue_name": name, "schema": pg_schema}
    return {"type": "postgres", "options": options}


@pytest_asyncio.fixture
async def pg_queue(pg_spec: dict[str, Any]) -> AsyncIterator[TaskQueueProtocol]:
    queue = edges.make_queue(pg_spec)
    async with queue:
        yield queue


async def test_jobs_finished_at_stop_are_acked(pg_queue: TaskQueueProtocol) -> None:
    await edges.check_jobs_finished_at_stop_are_acked(pg_queue)


async def test_sync_jobs_do_not_hold_the_process_past_its_shutdown_window(
    pg_spec: dict[str, Any], pg_queue: TaskQueueProtocol, tmp_path: Path
) -> None:
    await edges.check_sync_jobs_do_not_hold_the_process_past_its_shutdown_window(
        pg_spec, pg_queue, tmp_path
    )


async def test_a_job_that_kills_its_worker_pays_alone(
    pg_spec: dict[str, Any], pg_queue: TaskQueueProtocol, tmp_path: Path
) -> None:
    await edges.check_a_job_that_kills_its_worker_pays_alone(pg_spec, pg_queue, tmp_path)
