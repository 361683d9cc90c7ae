"""The checks of the workflow crash test, shared by the Redis and PostgreSQL runs."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import workflow_crash_app as app


def check(outcome: app.Outcome, workflows: int) -> dict[str, Any]:
    """Every callback ran with the right input, from one job, and never again once it
    had finished: the run whose result the workflow recorded is its last run.

    A callback killed while running (before its result was recorded) runs again:
    steps are at least once. Those re-runs are counted, not refused.
    """
    by_workflow: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for run in outcome.runs:
        by_workflow[run["workflow"]].append(run)
    assert sorted(by_workflow) == list(range(workflows))
    killed_mid_run = 0
    for workflow, runs in by_workflow.items():
        assert {r["job"] for r in runs} == {outcome.handles[workflow].job_ids[-1]}
        attempts = [r["attempt"] for r in runs]
        # A second enqueue would start over at attempt 1; a run after a kill has a new attempt.
        assert len(set(attempts)) == len(attempts), (workflow, attempts)
        for run in runs:
            assert run["values"] == app.expected_input(workflow), workflow
        size, recorded = outcome.results[workflow]
        assert size == app.FAN_OUT
        # No run after the one that finished and was recorded.
        assert recorded == max(attempts), (workflow, attempts, recorded)
        killed_mid_run += len(runs) - 1
    return {
        "kills": outcome.kills,
        "callbacks_run_after_finishing": 0,
        "callbacks_killed_mid_run_and_rerun": killed_mid_run,
        "steps_recorded_before_the_kill_not_rerun": outcome.recorded_not_rerun,
    }
