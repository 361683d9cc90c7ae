"""Firing ticks: which ticks of which templates are due, claiming them in the store
(once across schedulers), and enqueueing one ordinary job per tick."""

from __future__ import annotations

import builtins
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from opentelemetry import context as otel_context
from opentelemetry.trace import Span, SpanKind

from lexigram.tasks.protocol import Capability, TaskQueueProtocol
from lexigram.tasks.provider import TaskProvider
from lexigram.tasks.scheduler.store import StoreSnapshot, TemplateState, TemplateStore
from lexigram.tasks.scheduler.template import CatchUp, ScheduleTemplate
from lexigram.tasks.task import EnqueueOptions

logger = logging.getLogger("lexigram.tasks.scheduler")

#: Job headers naming the template and the tick a scheduled job belongs to.
HEADER_TEMPLATE = "lexigram-schedule"
HEADER_FIRE_TIME = "lexigram-fire-time"

_SPAN_TICK = "lexigram.scheduler.tick"
_ATTR_DUE_COUNT = "lexigram.scheduler.due_count"
_ATTR_TEMPLATE = "lexigram.scheduler.template"
_ATTR_FIRE_TIME = "lexigram.scheduler.fire_time"
_ATTR_LOCK_WON = "lexigram.scheduler.lock_won"


@dataclass(frozen=True, slots=True)
class FiredTick:
    """One job a scheduler enqueued for one tick of one template."""

    template: str
    fire_time: float
    job_id: str

    @property
    def fire_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.fire_time, UTC)


@dataclass(slots=True)
class Due:
    """The ticks of one template due now (``dropped``: more were due than it keeps)."""

    template: ScheduleTemplate
    times: list[float]
    dropped: bool


async def due_ticks(
    templates: Iterable[ScheduleTemplate],
    snapshot: StoreSnapshot,
    store: TemplateStore,
    now: float,
) -> tuple[builtins.list[Due], float | None]:
    """The due ticks of the active templates, and the earliest next tick among them.

    A template the store has no cursor for starts its cursor at ``now``.
    """
    due: builtins.list[Due] = []
    upcoming: builtins.list[float] = []
    for template in templates:
        state = snapshot.states.get(template.name)
        if state is None:
            cursor = await store.init_cursor(template.name, now)
            state = TemplateState(cursor)
        if state.paused:
            continue
        keep = template.catch_up_limit if template.catch_up is CatchUp.ALL else 1
        times, dropped = template.schedule.due_times(state.last_fire, now, keep)
        if times:
            due.append(Due(template, times, dropped))
        upcoming.append(template.schedule.next_after(max(now, state.last_fire)))
    return due, min(upcoming, default=None)


async def fire_due(
    provider: TaskProvider,
    store: TemplateStore,
    queue_for: Callable[[ScheduleTemplate], TaskQueueProtocol],
    due: builtins.list[Due],
    now: float,
) -> builtins.list[FiredTick]:
    """Claim and enqueue every due tick, in one ``lexigram.scheduler.tick`` span."""
    with provider.telemetry.tracer.start_as_current_span(
        _SPAN_TICK, context=otel_context.Context(), kind=SpanKind.INTERNAL
    ) as span:
        span.set_attribute(_ATTR_DUE_COUNT, sum(len(d.times) for d in due))
        fired: builtins.list[FiredTick] = []
        for item in due:
            fired.extend(await _fire(provider, store, queue_for, item, now, span))
        return fired


async def _fire(
    provider: TaskProvider,
    store: TemplateStore,
    queue_for: Callable[[ScheduleTemplate], TaskQueueProtocol],
    due: Due,
    now: float,
    span: Span,
) -> builtins.list[FiredTick]:
    template = due.template
    latest = due.times[-1]
    previous = await store.claim(template.name, latest)
    won = previous is not None
    if span.is_recording():
        span.add_event(
            "claim",
            {_ATTR_TEMPLATE: template.name, _ATTR_FIRE_TIME: latest, _ATTR_LOCK_WON: won},
        )
    if previous is None:
        return []
    # Another scheduler may have fired some of these before our store read.
    times = [t for t in due.times if t > previous]
    if template.catch_up is CatchUp.SKIP:
        to_fire = [latest] if now - latest <= template.misfire_grace else []
    elif template.catch_up is CatchUp.ONCE:
        to_fire = [latest]
    else:
        to_fire = times
    if len(to_fire) < len(times) or due.dropped:
        logger.warning(
            "schedule %r: missed ticks since %s not run (catch_up=%s)",
            template.name,
            template.schedule.local(previous).isoformat(),
            template.catch_up.value,
        )
    fired: builtins.list[FiredTick] = []
    for fire_time in to_fire:
        try:
            job_id = await enqueue_tick(provider, queue_for(template), template, fire_time)
        except Exception:
            # Give the unsent ticks back, so this or another scheduler retries them.
            sent = fired[-1].fire_time if fired else previous
            await store.release(template.name, latest, sent)
            raise
        fired.append(FiredTick(template.name, fire_time, job_id))
    return fired


async def enqueue_tick(
    provider: TaskProvider, queue: TaskQueueProtocol, template: ScheduleTemplate, fire_time: float
) -> str:
    """Enqueue the job of one tick of ``template``; return its id."""
    dedup_key = (
        f"lexigram-schedule:{template.name}:{fire_time:.0f}"
        if Capability.UNIQUE in queue.capabilities
        else None
    )
    options = EnqueueOptions(
        delay=random.uniform(0, template.jitter) if template.jitter else None,
        priority=template.priority,
        dedup_key=dedup_key,
        headers={
            HEADER_TEMPLATE: template.name,
            HEADER_FIRE_TIME: template.schedule.local(fire_time).isoformat(),
        },
        backend=template.backend,
    )
    job = provider.build_job(template.task, template.args, template.kwargs, options)
    handle = await provider.enqueue_job(job, backend=template.backend)
    logger.debug("schedule %r fired for %s: job %s", template.name, fire_time, handle.id)
    return handle.id
