"""Where failure records live: the storage protocol and the in-memory storage."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

from lexigram.tasks.dlq.filters import FailureFilter
from lexigram.tasks.dlq.record import FailureRecord
from lexigram.tasks.protocol import TaskQueueProtocol


@runtime_checkable
class DeadLetterStorage(Protocol):
    """What a dead-letter storage implements; records are keyed by ``record.id``.

    Lists are ordered by ``failed_at`` (then id). ``delete`` with a
    ``revision`` removes the record only if it is still that revision, so a
    replay never deletes a failure recorded after it read the record.
    """

    async def connect(self) -> None:
        """Open connections (and create tables); idempotent."""

    async def disconnect(self) -> None:
        """Close connections; idempotent."""

    async def put(self, record: FailureRecord) -> None:
        """Store ``record``, replacing any record with the same id."""

    async def get(self, record_id: str) -> FailureRecord | None:
        """The record with this id, or None."""

    async def list(
        self,
        where: FailureFilter,
        *,
        limit: int | None = 50,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[FailureRecord]:
        """Matching records in failure-time order, skipping ``offset``, at most ``limit``."""

    async def count(self, where: FailureFilter) -> int:
        """How many records match."""

    async def delete(self, record_id: str, revision: str | None = None) -> bool:
        """Remove one record (only if it has ``revision``, when given); True if removed."""

    async def purge(self, where: FailureFilter) -> int:
        """Remove every matching record; return how many."""


class MemoryDeadLetterStorage:
    """Records kept in this process: the default, for tests and development.

    Everything is lost when the process exits.
    """

    def __init__(self) -> None:
        self._records: dict[str, FailureRecord] = {}

    def __repr__(self) -> str:
        return "MemoryDeadLetterStorage()"

    async def connect(self) -> None:
        return None

    async def disconnect(self) -> None:
        return None

    async def put(self, record: FailureRecord) -> None:
        self._records[record.id] = record

    async def get(self, record_id: str) -> FailureRecord | None:
        return self._records.get(record_id)

    async def list(
        self,
        where: FailureFilter,
        *,
        limit: int | None = 50,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[FailureRecord]:
        found = sorted(
            (r for r in self._records.values() if where.matches(r)),
            key=lambda r: (r.failed_at, r.id),
            reverse=newest_first,
        )
        end = None if limit is None else offset + limit
        return found[offset:end]

    async def count(self, where: FailureFilter) -> int:
        return sum(1 for r in self._records.values() if where.matches(r))

    async def delete(self, record_id: str, revision: str | None = None) -> bool:
        record = self._records.get(record_id)
        if record is None or (revision is not None and record.revision != revision):
            return False
        del self._records[record_id]
        return True

    async def purge(self, where: FailureFilter) -> int:
        doomed = [i for i, r in self._records.items() if where.matches(r)]
        for record_id in doomed:
            del self._records[record_id]
        return len(doomed)


@runtime_checkable
class AtomicReplayStorage(Protocol):
    """Optional: a storage that can enqueue and delete in one transaction.

    ``PostgresDeadLetterStorage`` does so with a ``PostgresTaskQueue`` on the
    same database; a replay is then exactly once.
    """

    def can_replay_atomically(self, queue: TaskQueueProtocol) -> bool: ...

    async def replay_atomically(
        self,
        queue: TaskQueueProtocol,
        records: Sequence[FailureRecord],
        send: Callable[[list[FailureRecord]], Awaitable[list[str]]],
    ) -> dict[str, str]: ...
