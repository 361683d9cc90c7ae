"""The shapes of a workflow: signatures, chains, groups and chords.

A :class:`Signature` is a task with its arguments, not yet sent. Shapes nest
freely; ``await shape.enqueue()`` compiles the whole tree into one plan of
steps (see ``_plan``) and sends the steps that wait for nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from lexigram.tasks.task import Task
    from lexigram.tasks.workflows.handle import WorkflowHandle

R = TypeVar("R")

__all__ = ["Chain", "Chord", "Group", "Signature", "Workflow", "chain", "chord", "group"]


class Workflow:
    """Base of every shape: ``await shape.enqueue()`` starts it."""

    __slots__ = ()

    @property
    def error_handler(self) -> Signature[Any] | None:
        raise NotImplementedError

    def on_error(self, handler: Signature[Any]) -> Workflow:
        """The same shape; when a step fails for good, ``handler`` runs once.

        Unless immutable, the handler gets the failure as its first argument: a
        dict with ``workflow_id``, ``step``, ``task``, ``job_id``,
        ``error_type`` and ``error_message``.
        """
        raise NotImplementedError

    async def enqueue(self, *, workflow_id: str | None = None) -> WorkflowHandle:
        """Store the workflow's plan and send the steps that wait for nothing.

        ``workflow_id`` (default: a fresh one) names the workflow; its steps'
        job ids are derived from it.
        """
        from lexigram.tasks.workflows._enqueue import enqueue_workflow

        return await enqueue_workflow(self, workflow_id)


@dataclass(frozen=True, slots=True)
class Signature(Workflow, Generic[R]):
    """A task with arguments: one step. Build it with ``task.s(...)`` or ``task.si(...)``.

    In a chain, a step gets the previous step's result as its first argument
    (before ``args``), unless it is ``immutable``.
    """

    task: Task[Any, R]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    immutable: bool = False
    handler: Signature[Any] | None = None

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        mark = "si" if self.immutable else "s"
        return f"{self.task.name}.{mark}({', '.join(parts)})"

    @property
    def error_handler(self) -> Signature[Any] | None:
        return self.handler

    def on_error(self, handler: Signature[Any]) -> Signature[R]:
        return replace(self, handler=_checked_handler(handler))

    def set_immutable(self, immutable: bool = True) -> Signature[R]:
        """The same signature, taking (or not) the previous step's result."""
        return replace(self, immutable=immutable)


@dataclass(frozen=True, slots=True)
class Chain(Workflow):
    """Steps one after another; each gets the previous one's result (see :func:`chain`)."""

    steps: tuple[Workflow, ...]
    handler: Signature[Any] | None = None

    @property
    def error_handler(self) -> Signature[Any] | None:
        return self.handler

    def on_error(self, handler: Signature[Any]) -> Chain:
        return replace(self, handler=_checked_handler(handler))


@dataclass(frozen=True, slots=True)
class Group(Workflow):
    """Steps side by side; its result is the list of theirs, in order (see :func:`group`)."""

    steps: tuple[Workflow, ...]
    handler: Signature[Any] | None = None

    @property
    def error_handler(self) -> Signature[Any] | None:
        return self.handler

    def on_error(self, handler: Signature[Any]) -> Group:
        return replace(self, handler=_checked_handler(handler))


@dataclass(frozen=True, slots=True)
class Chord(Workflow):
    """A group, then one callback with the list of its results (see :func:`chord`)."""

    header: Group
    body: Workflow
    handler: Signature[Any] | None = None

    @property
    def error_handler(self) -> Signature[Any] | None:
        return self.handler

    def on_error(self, handler: Signature[Any]) -> Chord:
        return replace(self, handler=_checked_handler(handler))


def chain(*steps: Workflow) -> Chain:
    """Run ``steps`` in order; each gets the previous result as its first argument.

    ``chain(a.s(1), b.s(), c.s())`` runs ``c(b(a(1)))``. A step may be any
    shape: a group in a chain gets the previous result in each of its steps
    and passes the list of their results on.
    """
    return Chain(_shapes("chain", steps))


def group(*steps: Workflow | Iterable[Workflow]) -> Group:
    """Run ``steps`` in parallel; the group's result is the list of their results, in order.

    Takes the steps as arguments or as one iterable: ``group(t.s(i) for i in range(10))``.
    """
    if len(steps) == 1 and not isinstance(steps[0], Workflow):
        return Group(_shapes("group", tuple(steps[0])))
    return Group(_shapes("group", steps))


def chord(header: Group | Iterable[Workflow], body: Workflow) -> Chord:
    """Run the group ``header``, then ``body`` once with the list of its results."""
    if not isinstance(header, Group):
        header = group(header)
    if not isinstance(body, Workflow):
        raise TypeError(f"a chord's callback must be a signature or shape, got {body!r}")
    return Chord(header, body)


def _shapes(kind: str, steps: Iterable[Any]) -> tuple[Workflow, ...]:
    found = tuple(steps)
    for step in found:
        if not isinstance(step, Workflow):
            raise TypeError(
                f"{kind}() takes signatures (task.s(...)) and shapes, got {step!r}: "
                "did you call the task instead of task.s(...)?"
            )
    return found


def _checked_handler(handler: Any) -> Signature[Any]:
    if not isinstance(handler, Signature):
        raise TypeError(f"on_error takes a signature (task.s(...)), got {handler!r}")
    return handler
