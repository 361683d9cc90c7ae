"""Every storage built on a backend package connects through that package's code, and
fails like it: the DLQ's Redis and PostgreSQL storages and the scheduler's stores."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lexigram.tasks import BackendConnectionError
from lexigram.tasks.dlq import DeadLetterStorage, PostgresDeadLetterStorage, RedisDeadLetterStorage
from lexigram.tasks.scheduler import PostgresTemplateStore, RedisTemplateStore, TemplateStore

REDIS = {
    "malformed": "redis://:hunter2@127.0.0.1:notaport/0",
    "refused": "redis://:hunter2@127.0.0.1:1/0",
}
POSTGRES = {
    "malformed": "postgresql://app:hunter2@127.0.0.1:notaport/db",
    "refused": "postgresql://app:hunter2@127.0.0.1:1/db",
}
#: What the message names as the cause, by kind of failure and server.
CAUSES = {
    ("malformed", "redis"): "notaport",
    ("malformed", "postgres"): "ValueError",
    ("refused", "redis"): "Connect call failed",
    ("refused", "postgres"): "Connect call failed",
}
#: (how to make one for a URL, its server, what its connection is for)
STORAGES: dict[str, tuple[Callable[[str], DeadLetterStorage | TemplateStore], str, str]] = {
    "dlq-redis": (RedisDeadLetterStorage, "redis", "the dead letter queue"),
    "dlq-postgres": (PostgresDeadLetterStorage, "postgres", "the dead letter queue"),
    "scheduler-redis": (RedisTemplateStore, "redis", "the scheduler store"),
    "scheduler-postgres": (PostgresTemplateStore, "postgres", "the scheduler store"),
}


@pytest.mark.parametrize("failure", ["malformed", "refused"])
@pytest.mark.parametrize("kind", list(STORAGES))
async def test_connect_failures_are_reported_like_the_backends(kind: str, failure: str) -> None:
    """A malformed URL is a BackendConnectionError, not the client's bare ValueError
    (the Redis storages and the PostgreSQL store used to let it out), and every message
    names the cause and what the connection was for, never the password."""
    make, server, purpose = STORAGES[kind]
    storage = make((REDIS if server == "redis" else POSTGRES)[failure])
    with pytest.raises(BackendConnectionError) as caught:
        await storage.connect()
    reported = {str(caught.value), repr(storage)}
    assert all("hunter2" not in text for text in reported)
    assert f"for {purpose}: " in str(caught.value)
    assert CAUSES[failure, server] in str(caught.value)
