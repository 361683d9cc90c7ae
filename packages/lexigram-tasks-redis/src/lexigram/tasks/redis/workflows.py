"""RedisWorkflowStore: workflow state on Redis, with the fan-in as one Lua script.

One hash per workflow (``NS:ID``): ``status``, ``plan``, ``error``,
``steps`` (how many must finish), ``remaining`` and, per step ``N``,
``p:N`` (inputs not done yet), ``r:N`` (result), ``s:N`` (span) and
``e:N`` (enqueued). Recording results, failing and cancelling are scripts,
so each is atomic: the script call that takes a step's ``p:N`` to zero is
the one that claims it. The hash expires ``ttl`` seconds after creation.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from typing import Any

from lexigram.tasks.redact import redact_url
from lexigram.tasks.redis._cluster import hash_tagged
from lexigram.tasks.redis._connection import open_client, reported, validate_url
from lexigram.tasks.workflows.store import Claim, StepOutcome, WorkflowSnapshot
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.typing import EncodableT, FieldT

__all__ = ["RedisWorkflowStore"]

_SCRIPTS = ("complete", "fail", "cancel")


def _sources() -> dict[str, str]:
    folder = files("lexigram.tasks.redis").joinpath("lua")
    return {
        name: folder.joinpath(f"workflow_{name}.lua").read_text(encoding="utf-8")
        for name in _SCRIPTS
    }


_SOURCES = _sources()


class RedisWorkflowStore:
    """Workflow state on Redis (see the module docstring).

    Give it a ``redis_url`` to open its own client, or build it with
    :meth:`sharing` to use the client of a connected queue or job state store.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        namespace: str = "lexigram:workflow",
        source: Any = None,
    ) -> None:
        validate_url(redis_url)
        self.redis_url = redis_url
        self.namespace = hash_tagged(redis_url, namespace)
        self._source = source
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    @classmethod
    def sharing(cls, source: Any) -> RedisWorkflowStore:
        """A store on the client of ``source`` (a RedisTaskQueue or RedisJobStateStore)."""
        return cls(source.redis_url, source=source)

    def __repr__(self) -> str:
        return f"RedisWorkflowStore({redact_url(self.redis_url)!r}, namespace={self.namespace!r})"

    async def connect(self) -> None:
        if self._client is not None:
            return
        if self._source is not None:
            client: Redis = self._source.client
        else:
            client = await open_client(self.redis_url, purpose="the workflow store")
        self._scripts = {name: client.register_script(src) for name, src in _SOURCES.items()}
        self._client = client

    async def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._source is None:
            await client.aclose()

    @property
    def client(self) -> Redis:
        if self._client is None:
            raise RuntimeError(f"{self!r} is not connected: call connect() first")
        return self._client

    def _key(self, workflow_id: str) -> str:
        return f"{self.namespace}:{workflow_id}"

    async def _run(self, name: str, *args: Any) -> Any:
        self.client  # noqa: B018 - raises when not connected
        with reported(self.redis_url):
            # The key routes the call to the master of the namespace's slot (a cluster).
            return await self._scripts[name](keys=[self.namespace], args=[self.namespace, *args])

    async def create(
        self, workflow_id: str, plan: str, pending: Sequence[int], steps: int, ttl: float
    ) -> None:
        fields: dict[FieldT, EncodableT] = {
            "status": "running",
            "plan": plan,
            "steps": steps,
            "remaining": steps,
        }
        for index, count in enumerate(pending):
            fields[f"p:{index}"] = count
        key = self._key(workflow_id)
        with reported(self.redis_url):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)
                pipe.expire(key, max(int(ttl), 1))
                await pipe.execute()

    async def plan(self, workflow_id: str) -> str | None:
        with reported(self.redis_url):
            raw = await self.client.hget(self._key(workflow_id), "plan")
        return _text(raw) if raw is not None else None

    async def complete(self, outcomes: Sequence[StepOutcome]) -> list[Claim]:
        if not outcomes:
            return []
        args: list[Any] = []
        for outcome in outcomes:
            args += [
                outcome.workflow_id,
                outcome.step,
                outcome.result,
                outcome.span,
                len(outcome.dependents),
                *outcome.dependents,
            ]
        flat = await self._run("complete", *args)
        return [
            Claim(_text(flat[i]), int(flat[i + 1]), bool(int(flat[i + 2])))
            for i in range(0, len(flat), 3)
        ]

    async def inputs(self, workflow_id: str, steps: Sequence[int]) -> dict[int, tuple[str, str]]:
        if not steps:
            return {}
        fields = [f for s in steps for f in (f"r:{s}", f"s:{s}")]
        with reported(self.redis_url):
            values = await self.client.hmget(self._key(workflow_id), fields)
        found: dict[int, tuple[str, str]] = {}
        for position, step in enumerate(steps):
            result, span = values[2 * position], values[2 * position + 1]
            if result is not None:
                found[step] = (_text(result), _text(span) if span is not None else "")
        return found

    async def mark_enqueued(self, workflow_id: str, steps: Sequence[int]) -> str:
        key = self._key(workflow_id)
        with reported(self.redis_url):
            async with self.client.pipeline(transaction=True) as pipe:
                if steps:
                    pipe.hset(key, mapping={f"e:{s}": 1 for s in steps})
                pipe.hget(key, "status")
                replies = await pipe.execute()
        status = replies[-1]
        return _text(status) if status is not None else "cancelled"

    async def fail(self, workflow_id: str, step: int, error: str) -> Claim | None:
        reply = await self._run("fail", workflow_id, error)
        if not reply:
            return None
        return Claim(workflow_id, int(reply[0]), bool(int(reply[1])))

    async def cancel(self, workflow_id: str) -> list[int]:
        return [int(s) for s in await self._run("cancel", workflow_id)]

    async def snapshot(self, workflow_id: str) -> WorkflowSnapshot | None:
        with reported(self.redis_url):
            raw = await self.client.hgetall(self._key(workflow_id))
        if not raw:
            return None
        doc = {_text(k): _text(v) for k, v in raw.items()}
        results: dict[int, str] = {}
        enqueued: set[int] = set()
        for field, value in doc.items():
            if field.startswith("r:"):
                results[int(field[2:])] = value
            elif field.startswith("e:"):
                enqueued.add(int(field[2:]))
        return WorkflowSnapshot(
            doc.get("status", "running"),
            doc.get("plan", ""),
            doc.get("error"),
            results,
            frozenset(enqueued),
            frozenset(results),
        )

    async def forget(self, workflow_id: str) -> None:
        """Delete a workflow's state now (it also expires by itself)."""
        with reported(self.redis_url):
            await self.client.delete(self._key(workflow_id))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
