"""The optional parts a provider may have: a dead letter queue and a scheduler.

Both live in other distributions; the dashboard shows their pages only when
they are installed and the provider uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lexigram.tasks.provider import TaskProvider

if TYPE_CHECKING:
    from lexigram.tasks.dlq import DeadLetterQueue
    from lexigram.tasks.scheduler import TaskScheduler


def dead_letter_queue(provider: TaskProvider) -> DeadLetterQueue | None:
    """The provider's ``dead_letter=`` when it is a :class:`DeadLetterQueue`."""
    sink: Any = getattr(provider, "dead_letter", None)
    if sink is None:
        return None
    try:
        from lexigram.tasks.dlq import DeadLetterQueue
    except ImportError:
        return None
    return sink if isinstance(sink, DeadLetterQueue) else None


def scheduler_of(provider: TaskProvider) -> TaskScheduler | None:
    """The provider's scheduler (attached or not), if one was created in this process."""
    try:
        from lexigram.tasks.scheduler import TaskScheduler
    except ImportError:
        return None
    return TaskScheduler.of(provider)
