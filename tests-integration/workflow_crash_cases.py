"""The checks of the workflow crash test, shared by the Redis and PostgreSQL runs."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import workflow_crash_app as app


def check(outcome: app.Outcome, workflows: int) -> dict[str, Any]:
    """Every callback ran with the right input, from one job; no run of the callback
    or of a group step started after the run whose result was recorded had returned.

    Runs that started before it (a run killed while running, or one whose lease
    lapsed while it ran) are the at-least-once part: counted, not refused.
    """
    by_workflow: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for run in outcome.runs:
        by_workflow[run["workflow"]].append(run)
    assert sorted(by_workflow) == list(range(workflows))
    step_runs: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for run in outcome.step_runs:
        step_runs[run["workflow"], run["j"]].append(run)
    again = steps_again = 0
    for workflow, runs in by_workflow.items():
        assert {r["job"] for r in runs} == {outcome.handles[workflow].job_ids[-1]}
        attempts = [r["attempt"] for r in runs]
        # A second enqueue would start over at attempt 1; a run after a kill has a new attempt.
        assert len(set(attempts)) == len(attempts), (workflow, attempts)
        for run in runs:
            assert run["values"] == app.expected_input(workflow), workflow
        size, recorded, returned = outcome.results[workflow]
        assert size == app.FAN_OUT
        assert recorded in attempts, (workflow, attempts, recorded)
        # Once a run has finished (returned, then was recorded), none starts again.
        late = [r for r in runs if r["started"] > returned]
        assert not late, (workflow, late, recorded, returned)
        again += len(runs) - 1
        for j, (_, step_recorded, step_returned) in enumerate(runs[0]["inputs"]):
            done = step_runs[workflow, j]
            assert step_recorded in [r["attempt"] for r in done], (workflow, j, done)
            late = [r for r in done if r["started"] > step_returned]
            assert not late, (workflow, j, late, step_recorded, step_returned)
            steps_again += len(done) - 1
    return {
        "kills": outcome.kills,
        "runs_started_after_one_finished": 0,
        "callbacks_run_again_before_one_finished": again,
        "steps_run_again_before_one_finished": steps_again,
        "steps_recorded_before_the_kill_not_rerun": outcome.recorded_not_rerun,
    }
