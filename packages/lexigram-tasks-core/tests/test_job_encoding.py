"""The bytes a job is written as, whichever way the encoder takes, and fresh job ids."""

from __future__ import annotations

import enum
import json
import multiprocessing
import os
import uuid
from typing import Any

import pytest

from lexigram.tasks import Job, JobSerializationError

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def compact_json(job: Job) -> bytes:
    """The wire format as docs/job-format.md defines it: the document as compact JSON, UTF-8."""
    text = json.dumps(job.to_dict(), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode()


class Level(enum.IntEnum):
    HIGH = 7


class Name(str):
    pass


class Seconds(float):
    pass


def shapes() -> dict[str, Job]:
    return {
        "enqueued": Job(task="app.noop", args=["noop", None], queue="bench"),
        "every-field": Job(
            task="app.send_email",
            args=["a@b.c", 3, 2.5, None, True, [1, {"x": []}]],
            kwargs={"subject": "hi", "nested": {"deep": [None]}},
            queue="emails",
            attempt=3,
            failures=1,
            max_retries=5,
            enqueued_at=1_700_000_000.25,
            run_at=1_700_000_060.0,
            priority=9,
            timeout=30,
            dedup_key="email:42",
            headers={"traceparent": TRACEPARENT, "x-tenant": "acme"},
        ),
        "escapes": Job(
            task='app."quoted"\\task\n',
            queue="q\u2028\x00",
            args=["\x7f", "tab\there"],
            dedup_key='k"\\',
            headers={'h"': "v\x01"},
        ),
        "unicode": Job(task="app.grüße", args=["日本語", "🚀"], headers={"x-note": "ünï"}),
        "extra-fields": Job(task="app.noop", extra={"x_future": {"a": [1, 2]}, "id": "shadowed"}),
        "int-times": Job(task="app.t", enqueued_at=1_700_000_000, run_at=5, timeout=2),
        "float-timeout": Job(task="app.t", timeout=2.0),
        "bool-fields": Job(task="app.t", attempt=True, failures=False, max_retries=True),  # type: ignore[arg-type]
        "int-enum-priority": Job(task="app.t", priority=Level.HIGH),
        "subclassed-values": Job(
            task=Name("app.t"), queue=Name("q"), enqueued_at=Seconds(1.5), timeout=Seconds(3)
        ),
        "tuple-args": Job(task="app.t", args=("a", 1)),  # type: ignore[arg-type]
        "huge-numbers": Job(task="app.t", args=[10**100, 1e308, -0.0, 5e-324], max_retries=2**70),
        "negative-and-odd": Job(task="app.t", attempt=-1, priority=-3, run_at=-0.5),
    }


@pytest.mark.parametrize("job", shapes().values(), ids=list(shapes()))
def test_a_job_is_written_as_its_document_in_compact_json(job: Job) -> None:
    assert job.to_bytes() == compact_json(job)
    assert job.to_json() == compact_json(job).decode()
    assert job.to_bytes() == job.to_bytes()  # the second time, from what the first kept


def test_equal_values_of_other_types_are_each_written_as_their_own() -> None:
    # 1, 1.0 and True are equal (and hash alike) yet are written 1, 1.0 and true.
    jobs = [
        Job(task="app.t", id="a", enqueued_at=1.5, timeout=1),
        Job(task="app.t", id="a", enqueued_at=1.5, timeout=1.0),
        Job(task="app.t", id="a", enqueued_at=1.5, timeout=True),  # type: ignore[arg-type]
        Job(task="app.t", id="a", enqueued_at=1.5, attempt=1),
        Job(task="app.t", id="a", enqueued_at=1.5, attempt=True),
    ]
    for job in jobs + jobs:
        assert job.to_bytes() == compact_json(job)
    assert len({job.to_bytes() for job in jobs}) == len(jobs)


def test_many_task_names_are_each_written_as_their_own() -> None:
    for n in range(3000):
        job = Job(task=f"app.task_{n}", queue=f"q{n % 7}", max_retries=n % 3, timeout=n or None)
        assert job.to_bytes() == compact_json(job)


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), "lone \udcff surrogate", object()],
    ids=["nan", "infinity", "lone-surrogate", "object"],
)
@pytest.mark.parametrize("field", ["timeout", "run_at", "enqueued_at", "dedup_key", "headers"])
def test_a_field_json_cannot_carry_is_refused_whichever_field(field: str, value: Any) -> None:
    job = Job(task="app.t")
    setattr(job, field, {"h": value} if field == "headers" else value)
    with pytest.raises(JobSerializationError):
        job.to_bytes()
    with pytest.raises(JobSerializationError):
        job.to_json()


def test_fresh_ids_are_distinct_random_uuid4_hex() -> None:
    ids = [Job(task="t").id for _ in range(2000)]  # several refills of the id supply
    assert len(set(ids)) == len(ids)
    for job_id in ids:
        parsed = uuid.UUID(hex=job_id)
        assert parsed.hex == job_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def _child_ids(connection: Any) -> None:
    connection.send([Job(task="t").id for _ in range(5)])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_process_does_not_reuse_its_parents_ids() -> None:
    Job(task="t")  # the parent holds ids made ahead
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    child = context.Process(target=_child_ids, args=(writer,))
    child.start()
    from_child = reader.recv()
    child.join(10)
    from_parent = [Job(task="t").id for _ in range(5)]
    assert not set(from_child) & set(from_parent)
