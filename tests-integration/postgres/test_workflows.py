"""The workflow contract on a real PostgreSQL: state in the queue's schema (migration 0007)."""

from __future__ import annotations

from lexigram.tasks.workflows.testing import WorkflowContract

from .test_contract import PostgresHooks  # type: ignore[import-not-found]


class TestPostgresWorkflows(PostgresHooks, WorkflowContract):
    pass
