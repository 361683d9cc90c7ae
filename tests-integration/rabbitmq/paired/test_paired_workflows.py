"""The workflow contract on RabbitMQ paired with a job state store: the workflow state
lives in the store's database (Redis or PostgreSQL)."""

from __future__ import annotations

from lexigram.tasks.workflows.testing import WorkflowContract

from .test_paired_contract import PairedHooks  # type: ignore[import-not-found]


class TestRabbitMQWithRedisStoreWorkflows(PairedHooks, WorkflowContract):
    pass


class TestRabbitMQWithPostgresStoreWorkflows(PairedHooks, WorkflowContract):
    store_kind = "postgres"
