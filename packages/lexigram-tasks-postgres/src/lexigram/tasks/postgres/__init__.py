"""PostgreSQL backend for lexigram-tasks: ACID job queues with no extra infrastructure.

    queue = PostgresTaskQueue(postgres_dsn="postgresql://app@localhost/app", queue_name="default")

See ``docs/backends/postgres.md`` for the schema, migrations, transactional
enqueue, tuning and retention.
"""

from __future__ import annotations

from lexigram.tasks.postgres._connect import validate_url
from lexigram.tasks.postgres._version import __version__
from lexigram.tasks.postgres.migrate import migrate
from lexigram.tasks.postgres.queue import PostgresTaskQueue

__all__ = ["PostgresTaskQueue", "__version__", "migrate", "validate_url"]
