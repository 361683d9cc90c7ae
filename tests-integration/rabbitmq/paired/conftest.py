"""Fixtures of RabbitMQ paired with a job state store: the store's configuration, unique
per test (a Redis key namespace, a PostgreSQL schema), and its removal afterwards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest_asyncio
from redis.asyncio import Redis


def store_spec(kind: str, redis_url: str, postgres_dsn: str, **options: Any) -> dict[str, Any]:
    """The ``state_store`` mapping of a store of ``kind`` that no other test uses."""
    unique = uuid.uuid4().hex[:10]
    if kind == "redis":
        namespace = f"lxstate-{unique}"
        return {"type": "redis", "redis_url": redis_url, "namespace": namespace, **options}
    return {
        "type": "postgres",
        "postgres_dsn": postgres_dsn,
        "schema": f"lxstate_{unique}",
        **options,
    }


async def drop_spec(spec: dict[str, Any]) -> None:
    """Delete what a store made from ``spec`` left on its server."""
    if spec["type"] == "redis":
        client = Redis.from_url(spec["redis_url"])
        try:
            keys = [key async for key in client.scan_iter(match=f"{spec['namespace']}:*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
    else:
        connection = await asyncpg.connect(spec["postgres_dsn"])
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{spec["schema"]}" CASCADE')
        finally:
            await connection.close()


class StoreSpecs:
    """Makes ``state_store`` mappings, each unique; what they left is deleted afterwards."""

    def __init__(self, redis_url: str, postgres_dsn: str) -> None:
        self.redis_url, self.postgres_dsn = redis_url, postgres_dsn
        self.made: list[dict[str, Any]] = []

    def __call__(self, kind: str, **options: Any) -> dict[str, Any]:
        spec = store_spec(kind, self.redis_url, self.postgres_dsn, **options)
        self.made.append(spec)
        return spec


@pytest_asyncio.fixture
async def store_specs(redis_url: str, postgres_dsn: str) -> AsyncIterator[StoreSpecs]:
    specs = StoreSpecs(redis_url, postgres_dsn)
    yield specs
    for spec in specs.made:
        await drop_spec(spec)
