"""The workflow contract on a real Redis: state in the queue's own Redis."""

from __future__ import annotations

from lexigram.tasks.workflows.testing import WorkflowContract

from .test_contract import RedisHooks  # type: ignore[import-not-found]


class TestRedisWorkflows(RedisHooks, WorkflowContract):
    pass
