"""Building workflows: what the shapes accept and the clear errors for what they do not."""

from __future__ import annotations

import pytest

from lexigram.tasks import MemoryTaskQueue, TaskArgumentsError, TaskProvider, chain, chord, group

provider = TaskProvider(queue=MemoryTaskQueue(), worker_count=4)
other = TaskProvider(queue=MemoryTaskQueue())


@provider.task(name="shapes.add")
async def add(x: int, y: int) -> int:
    return x + y


@provider.task(name="shapes.total")
async def total(values: list[int]) -> int:
    return sum(values)


@other.task(name="shapes.elsewhere")
async def elsewhere(x: int) -> int:
    return x


async def test_a_chord_of_an_empty_group_calls_back_with_an_empty_list() -> None:
    async with provider:
        handle = await chord(group(), total.s()).enqueue()
        assert await handle.result(timeout=5) == 0


async def test_a_single_signature_is_a_workflow_of_one_step() -> None:
    async with provider:
        handle = await add.s(2, 3).enqueue()
        assert await handle.result(timeout=5) == 5
        assert len(handle.job_ids) == 1


def test_shapes_refuse_what_is_not_a_signature() -> None:
    with pytest.raises(TypeError, match="did you call the task"):
        group(add.s(1, 2), 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callback must be a signature"):
        chord([add.s(1, 2)], total)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_error takes a signature"):
        chain(add.s(1, 2)).on_error(total)  # type: ignore[arg-type]


async def test_on_error_belongs_to_the_outermost_shape() -> None:
    inner = chain(add.s(1, 2), add.s(3)).on_error(total.s())
    with pytest.raises(ValueError, match="outermost"):
        await group(inner, add.s(1, 1)).enqueue()


async def test_steps_must_come_from_one_provider() -> None:
    with pytest.raises(ValueError, match="another provider"):
        await chain(add.s(1, 2), elsewhere.s()).enqueue()


async def test_arguments_are_checked_with_the_input_a_step_receives() -> None:
    with pytest.raises(TaskArgumentsError, match="previous step's result"):
        await chain(add.s(1, 2), total.s(4)).enqueue()
    with pytest.raises(TaskArgumentsError, match="the failure"):
        await chain(add.s(1, 2)).on_error(add.s(1, 2)).enqueue()
