"""The job model, its JSON wire format, and docs/job.schema.json agreeing with both."""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from lexigram.tasks import Job, JobSerializationError, MalformedJobError, MemoryTaskQueue
from lexigram.tasks.job import MAX_PRIORITY, MIN_PRIORITY, WIRE_VERSION

DOCS = Path(__file__).resolve().parents[3] / "docs"
SCHEMA = json.loads((DOCS / "job.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def valid(doc: Any) -> bool:
    return VALIDATOR.is_valid(doc)


def job_shapes() -> dict[str, Job]:
    return {
        "minimal": Job(task="app.noop"),
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
            priority=MAX_PRIORITY,
            timeout=30,
            dedup_key="email:42",
            headers={"traceparent": TRACEPARENT, "x-tenant": "acme"},
        ),
        "unknown-fields": Job(
            task="app.noop", extra={"x_future": {"a": [1, 2]}, "producer": "go/1.2"}
        ),
        "unicode": Job(task="app.grüße", args=["日本語", "🚀"], headers={"x-note": "ünï"}),
        "lowest-priority-delayed": Job(task="app.later", run_at=1e10, priority=MIN_PRIORITY),
    }


# -- the Python model ---------------------------------------------------------------


@pytest.mark.parametrize("job", job_shapes().values(), ids=list(job_shapes()))
def test_json_round_trip_keeps_every_field(job: Job) -> None:
    assert Job.from_json(job.to_bytes()) == job
    assert Job.from_json(job.to_json()) == job


def test_document_has_version_and_every_field() -> None:
    doc = Job(task="app.noop").to_dict()
    assert doc["v"] == WIRE_VERSION == 1
    assert set(doc) == {
        "v", "id", "task", "args", "kwargs", "queue", "attempt", "failures", "max_retries",
        "enqueued_at", "run_at", "priority", "timeout", "dedup_key", "headers",
    }  # fmt: skip


def test_unknown_fields_are_kept_and_written_back() -> None:
    foreign = {"id": "j1", "task": "app.noop", "x_future": [1, {"b": None}], "origin": "rust"}
    job = Job.from_dict(foreign)
    assert job.extra == {"x_future": [1, {"b": None}], "origin": "rust"}
    doc = json.loads(job.to_json())
    assert doc["x_future"] == [1, {"b": None}]
    assert doc["origin"] == "rust"


def test_known_fields_win_over_an_extra_of_the_same_name() -> None:
    job = Job(task="app.noop", id="real", extra={"id": "shadow", "other": 1})
    doc = job.to_dict()
    assert doc["id"] == "real"
    assert doc["other"] == 1


def test_minimal_foreign_document_gets_defaults() -> None:
    job = Job.from_json(b'{"id": "abc", "task": "app.noop"}')
    assert (job.args, job.kwargs, job.queue, job.attempt, job.max_retries) == (
        [],
        {},
        "default",
        0,
        0,
    )
    assert (job.run_at, job.priority, job.timeout, job.dedup_key, job.headers) == (
        None,
        0,
        None,
        None,
        {},
    )
    assert job.enqueued_at > 0


def test_nulls_mean_defaults() -> None:
    doc = {"id": "abc", "task": "t", "args": None, "kwargs": None, "priority": None}
    job = Job.from_dict(doc | {"headers": None, "queue": None, "attempt": None})
    assert (job.args, job.kwargs, job.priority, job.headers, job.queue, job.attempt) == (
        [],
        {},
        0,
        {},
        "default",
        0,
    )


def test_integer_times_are_read_as_floats() -> None:
    job = Job.from_dict({"id": "a", "task": "t", "enqueued_at": 1700000000, "timeout": 5})
    assert job.enqueued_at == 1700000000.0
    assert isinstance(job.enqueued_at, float)
    assert job.timeout == 5.0


#: Documents both the reader and the schema refuse, and a word the reader's error contains.
REJECTED: dict[str, tuple[Any, str]] = {
    "not-an-object": ([1, 2], "object"),
    "missing-id": ({"task": "t"}, "'id'"),
    "missing-task": ({"id": "a"}, "'task'"),
    "empty-id": ({"id": "", "task": "t"}, "'id'"),
    "empty-task": ({"id": "a", "task": ""}, "'task'"),
    "id-not-string": ({"id": 7, "task": "t"}, "'id'"),
    "args-not-list": ({"id": "a", "task": "t", "args": "x"}, "'args'"),
    "kwargs-not-object": ({"id": "a", "task": "t", "kwargs": [1]}, "'kwargs'"),
    "attempt-bool": ({"id": "a", "task": "t", "attempt": True}, "'attempt'"),
    "attempt-string": ({"id": "a", "task": "t", "attempt": "1"}, "'attempt'"),
    "max-retries-float": ({"id": "a", "task": "t", "max_retries": 1.5}, "'max_retries'"),
    "priority-too-high": ({"id": "a", "task": "t", "priority": 10}, "priority"),
    "priority-negative": ({"id": "a", "task": "t", "priority": -1}, "priority"),
    "run-at-string": ({"id": "a", "task": "t", "run_at": "tomorrow"}, "'run_at'"),
    "enqueued-at-bool": ({"id": "a", "task": "t", "enqueued_at": False}, "'enqueued_at'"),
    "timeout-string": ({"id": "a", "task": "t", "timeout": "30s"}, "'timeout'"),
    "dedup-key-number": ({"id": "a", "task": "t", "dedup_key": 5}, "'dedup_key'"),
    "headers-not-object": ({"id": "a", "task": "t", "headers": ["x"]}, "'headers'"),
    "header-not-string": ({"id": "a", "task": "t", "headers": {"n": 1}}, "'n'"),
    "newer-version": ({"v": 2, "id": "a", "task": "t"}, "version"),
}


@pytest.mark.parametrize(("doc", "word"), REJECTED.values(), ids=list(REJECTED))
def test_reader_rejects_invalid_documents_naming_the_problem(doc: Any, word: str) -> None:
    with pytest.raises(MalformedJobError, match=re.escape(word)):
        Job.from_json(json.dumps(doc))


@pytest.mark.parametrize("data", [b"{not json", b"\xff\xfe", b""], ids=["syntax", "utf8", "empty"])
def test_reader_rejects_bytes_that_are_not_json(data: bytes) -> None:
    with pytest.raises(MalformedJobError, match="not valid JSON"):
        Job.from_json(data)


def _nested(depth: int) -> str:
    return '{"id":"a","task":"t","args":' + "[" * depth + "]" * depth + "}"


UNDECODABLE = {
    # Each one used to escape as another exception, or to be read but not writable back.
    "nested-1000-deep": (_nested(1000).encode(), "nested too deeply"),
    "nan": (b'{"id":"a","task":"t","args":[NaN]}', "NaN"),
    "infinity": (b'{"id":"a","task":"t","args":[-Infinity]}', "Infinity"),
    "float-overflow": (b'{"id":"a","task":"t","args":[1e400]}', "too large for a float"),
    "long-float": (b'{"id":"a","task":"t","args":[' + b"9" * 400 + b".0]}", "too large"),
    "int-over-digit-limit": (b'{"id":"a","task":"t","args":[' + b"9" * 5000 + b"]}", "digits"),
    "lone-surrogate-escape": (b'{"id":"a","task":"t","args":["\\udcff"]}', "lone surrogate"),
    "encoded-surrogate": (
        '{"id":"a","task":"t","args":["\udcff"]}'.encode("utf-8", "surrogatepass"),
        "utf-8|lone surrogate",
    ),
    "invalid-utf8": (b'{"id":"a","task":"t","args":["\xff"]}', "utf-8|lone surrogate"),
}


@pytest.mark.parametrize(("data", "word"), UNDECODABLE.values(), ids=list(UNDECODABLE))
def test_every_decoding_failure_is_a_malformed_job(data: bytes, word: str) -> None:
    with pytest.raises(MalformedJobError, match=word):
        Job.from_json(data)
    with pytest.raises(MalformedJobError, match=word):
        Job.from_json(data.decode("utf-8", "surrogateescape"))  # the same, handed over as text


def test_surrogate_pairs_and_non_ascii_round_trip() -> None:
    job = Job.from_json(b'{"id":"a","task":"t","args":["\\ud83d\\ude00","caf\xc3\xa9"]}')
    assert job.args == ["\U0001f600", "caf\u00e9"]
    assert Job.from_json(job.to_bytes()).args == job.args


UNWRITABLE = {
    "nested-too-deep": (functools.reduce(lambda inner, _: [inner], range(3000), []), "nested"),
    "lone-surrogate": ("file-\udcff.txt", "lone surrogate"),
    "infinity": (math.inf, "Out of range float"),
}


@pytest.mark.parametrize(("value", "word"), UNWRITABLE.values(), ids=list(UNWRITABLE))
def test_every_encoding_failure_is_a_serialization_error(value: Any, word: str) -> None:
    with pytest.raises(JobSerializationError, match=word):
        Job(task="app.t", args=[value]).to_bytes()
    with pytest.raises(JobSerializationError, match=word):
        Job(task="app.t", kwargs={"v": value}).to_json()


def test_malformed_job_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="missing required field"):
        Job.from_json(b"{}")


def test_unserialisable_positional_argument_is_named() -> None:
    job = Job(task="app.save", args=["ok", object()])
    with pytest.raises(
        JobSerializationError, match=r"'app\.save'.*positional argument 1 \(object\)"
    ):
        job.to_json()


def test_unserialisable_keyword_argument_is_named() -> None:
    job = Job(task="app.save", kwargs={"when": {1, 2}})
    with pytest.raises(JobSerializationError, match=r"argument 'when' \(set\)"):
        job.to_bytes()


def test_nan_is_refused_because_json_has_no_nan() -> None:
    with pytest.raises(JobSerializationError, match="positional argument 0"):
        Job(task="app.calc", args=[math.nan]).to_json()


def test_new_jobs_get_distinct_ids() -> None:
    ids = {Job(task="t").id for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


# -- docs/job.schema.json -----------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_schema_describes_exactly_the_fields_jobs_carry() -> None:
    assert set(SCHEMA["properties"]) == set(Job(task="t").to_dict())
    assert set(SCHEMA["required"]) == {"id", "task"}
    assert SCHEMA["additionalProperties"] is True
    assert all(prop.get("description") for prop in SCHEMA["properties"].values())


@pytest.mark.parametrize("job", job_shapes().values(), ids=list(job_shapes()))
def test_jobs_written_by_the_library_match_the_schema(job: Job) -> None:
    VALIDATOR.validate(job.to_dict())
    VALIDATOR.validate(json.loads(job.to_bytes()))


async def test_jobs_read_back_from_the_memory_queue_match_the_schema() -> None:
    queue = MemoryTaskQueue(queue_name="schema")
    await queue.connect()
    shapes = list(job_shapes().values())
    for job in shapes:
        job.queue = "schema"
        job.run_at = None  # deliverable now
    await queue.enqueue_many(shapes)
    deliveries = await queue.dequeue(max_jobs=len(shapes), lease_seconds=30)
    assert len(deliveries) == len(shapes)
    for delivery in deliveries:
        assert delivery.job is not None
        VALIDATOR.validate(json.loads(delivery.raw))
        VALIDATOR.validate(delivery.job.to_dict())

    retried, dead = deliveries[0], deliveries[1]
    assert retried.job is not None
    retried.job.headers["x-last-error"] = "boom"
    previous_attempt = retried.job.attempt
    await queue.nack(retried, requeue=True)
    await queue.nack(dead, requeue=False, reason="gave up")
    [again] = await queue.dequeue(lease_seconds=30)
    assert again.job is not None
    assert again.job.id == retried.job.id
    assert again.job.attempt == previous_attempt + 1
    VALIDATOR.validate(json.loads(again.raw))
    VALIDATOR.validate(again.job.to_dict())
    [letter] = await queue.dead_letters()
    VALIDATOR.validate(json.loads(letter.payload))
    await queue.disconnect()


@pytest.mark.parametrize(("doc", "word"), REJECTED.values(), ids=list(REJECTED))
def test_schema_rejects_what_the_reader_rejects(doc: Any, word: str) -> None:
    assert not valid(doc)


def test_schema_accepts_a_minimal_foreign_document_with_unknown_fields() -> None:
    doc = {"id": "from-go", "task": "app.noop", "x_trace": {"span": 1}, "origin": "go"}
    assert valid(doc)
    assert Job.from_dict(doc).extra == {"x_trace": {"span": 1}, "origin": "go"}


def test_job_format_page_documents_every_field() -> None:
    page = (DOCS / "job-format.md").read_text()
    for name in SCHEMA["properties"]:
        assert re.search(rf"^\| `{name}` \|", page, re.MULTILINE), f"field {name!r} undocumented"
    assert "job.schema.json" in page


def test_lost_leases_are_the_attempts_that_neither_failed_nor_finished() -> None:
    assert Job(task="t").lost_leases == 0  # not yet delivered
    assert Job(task="t", attempt=1).lost_leases == 0
    assert Job(task="t", attempt=3, failures=1).lost_leases == 1
    older = Job.from_json(b'{"id": "a", "task": "t", "attempt": 2}')  # no failures field
    assert (older.failures, older.lost_leases) == (0, 1)
