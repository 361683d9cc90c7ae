"""The job: what travels through every backend, as one JSON document.

The wire format is documented in ``docs/job-format.md`` and
``docs/job.schema.json``. Fields this version does not know are kept in
``Job.extra`` and written back unchanged, so a newer producer's data survives
a round trip through an older worker.
"""

from __future__ import annotations

import json
import operator
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any

from lexigram.tasks.errors import JobSerializationError, MalformedJobError

#: Version of the wire format written by this library (the ``v`` field).
WIRE_VERSION = 1

#: Priorities run from 0 (default, lowest) to 9 (highest): the range every
#: built-in backend can honour (RabbitMQ's ``x-max-priority`` included).
MIN_PRIORITY = 0
MAX_PRIORITY = 9

#: Largest encoded job accepted at enqueue unless configured otherwise
#: (``max_job_bytes``): big payloads belong in object storage, with a key in the job.
DEFAULT_MAX_JOB_BYTES = 10 * 1024 * 1024

# One encoder for every job: json.dumps builds a new one per call when given options.
# Non-ASCII text is written as UTF-8 (not \u escapes), so a lone surrogate, which
# UTF-8 cannot carry, fails here at enqueue instead of in a backend's parser.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)

# The C encoder _ENCODER.encode builds on every call (with a fresh record of the
# containers being encoded, to report a circular reference), built once without
# that record. It writes the same text; whatever it refuses (or a circular
# reference, which ends in RecursionError here) is encoded again by _ENCODER,
# which raises the error users see. None where json has no C accelerator.
_MAKE_C_ENCODER: Callable[..., Callable[[Any, int], list[str]]] | None = getattr(
    json.encoder, "c_make_encoder", None
)
_ENCODE_FAST = (
    _MAKE_C_ENCODER(None, _ENCODER.default, encode_basestring, None, ":", ",", False, False, False)
    if _MAKE_C_ENCODER is not None
    else None
)

# A surrogate escape or character: the decoded string may hold a lone surrogate,
# which the encoder refuses. Only documents that contain one pay for
# _check_writable.
_SURROGATE = re.compile("\\\\u[dD][89a-fA-F]|[\ud800-\udfff]")

#: The fields of the wire document, in the order this library writes them.
_FIELD_NAMES = (
    "v",
    "id",
    "task",
    "args",
    "kwargs",
    "queue",
    "attempt",
    "failures",
    "max_retries",
    "enqueued_at",
    "run_at",
    "priority",
    "timeout",
    "dedup_key",
    "headers",
)
_KNOWN_FIELDS = frozenset(_FIELD_NAMES)


# Job ids are made _IDS_AT_ONCE at a time from one os.urandom call: a system call
# per id, and setting each id's bits in Python, cost more than the id. The two
# tables set the version (4) and RFC 4122 variant bits of a byte.
_IDS_AT_ONCE = 256
_VERSION_4 = bytes(b & 0x0F | 0x40 for b in range(256))
_VARIANT = bytes(b & 0x3F | 0x80 for b in range(256))
_fresh_ids: list[str] = []
if hasattr(os, "register_at_fork"):
    # A forked child must not hand out the ids its parent still holds.
    os.register_at_fork(after_in_child=_fresh_ids.clear)


def new_job_id() -> str:
    """A fresh, URL-safe job id (UUID4, 32 hex characters)."""
    while True:  # list.pop and list.extend are atomic: threads need no lock
        try:
            return _fresh_ids.pop()
        except IndexError:
            _fresh_ids.extend(_make_ids())


def _make_ids() -> list[str]:
    """``uuid.uuid4().hex`` of _IDS_AT_ONCE ids, each from 16 random bytes."""
    raw = bytearray(os.urandom(16 * _IDS_AT_ONCE))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_VARIANT)
    return raw.hex(" ", 16).split(" ")


@dataclass(slots=True)
class Job:
    """One unit of work.

    ``attempt`` counts deliveries: 0 while the job waits for its first run,
    1 during the first run, and so on. Backends increment it when they lease
    the job, so a job whose worker was killed still uses up an attempt.
    ``failures`` counts the attempts that raised and were retried, so
    ``attempt - 1 - failures`` is how many runs were lost with their worker.
    Times are Unix epoch seconds (floats).
    """

    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str = "default"
    id: str = field(default_factory=new_job_id)
    attempt: int = 0
    max_retries: int = 0
    enqueued_at: float = field(default_factory=time.time)
    run_at: float | None = None
    priority: int = 0
    timeout: float | None = None
    dedup_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    failures: int = 0

    @property
    def lost_leases(self) -> int:
        """Runs of this job that ended without a result: their worker died or lost the lease."""
        return max(self.attempt - 1 - self.failures, 0)

    @property
    def trace_id(self) -> str | None:
        """The trace id of its W3C ``traceparent`` header (``00-<trace id>-<span id>-<flags>``)."""
        parts = self.headers.get("traceparent", "").split("-")
        return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None

    def to_dict(self) -> dict[str, Any]:
        """The wire document as a dict (unknown fields included)."""
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            v=WIRE_VERSION,
            id=self.id,
            task=self.task,
            args=self.args,
            kwargs=self.kwargs,
            queue=self.queue,
            attempt=self.attempt,
            failures=self.failures,
            max_retries=self.max_retries,
            enqueued_at=self.enqueued_at,
            run_at=self.run_at,
            priority=self.priority,
            timeout=self.timeout,
            dedup_key=self.dedup_key,
            headers=self.headers,
        )
        return doc

    def to_json(self) -> str:
        """Serialise to the JSON wire format.

        Raises :class:`JobSerializationError` naming the argument that JSON
        cannot represent: an object of another type, NaN or infinity, a
        string with a lone surrogate, or nesting too deep to encode.
        """
        try:
            text = _ENCODER.encode(self.to_dict())
            if not text.isascii():
                text.encode()
        except Exception as exc:
            raise JobSerializationError(_describe_unserialisable(self, exc)) from exc
        return text

    def to_bytes(self) -> bytes:
        """The JSON wire format, UTF-8 encoded."""
        text = _wire_text(self)
        if text is not None:
            try:
                return text.encode()
            except UnicodeEncodeError:
                pass  # a lone surrogate: encoded again below, which words the error
        doc = self.to_dict()
        if _ENCODE_FAST is not None:
            try:
                return "".join(_ENCODE_FAST(doc, 0)).encode()
            except Exception:
                pass  # encoded again below, which words the error
        try:
            text = _ENCODER.encode(doc)
            return text.encode()
        except Exception as exc:
            raise JobSerializationError(_describe_unserialisable(self, exc)) from exc

    @classmethod
    def from_dict(cls, doc: Any) -> Job:
        """Build a job from a decoded wire document, validating every field."""
        if not isinstance(doc, dict):
            raise MalformedJobError(f"a job must be a JSON object, got {type(doc).__name__}")
        fast = _well_formed(doc)
        if fast is not None:
            return fast
        version = doc.get("v", WIRE_VERSION)
        if not isinstance(version, int) or version > WIRE_VERSION:
            raise MalformedJobError(f"unsupported job format version {version!r}")
        extra = {k: v for k, v in doc.items() if k not in _KNOWN_FIELDS}
        return cls(
            id=_require(doc, "id", str),
            task=_require(doc, "task", str),
            args=_optional(doc, "args", list, []),
            kwargs=_optional(doc, "kwargs", dict, {}),
            queue=_optional(doc, "queue", str, "default"),
            attempt=_optional(doc, "attempt", int, 0),
            failures=_optional(doc, "failures", int, 0),
            max_retries=_optional(doc, "max_retries", int, 0),
            enqueued_at=_number(doc, "enqueued_at", time.time()),
            run_at=_nullable_number(doc, "run_at"),
            priority=_priority(doc),
            timeout=_nullable_number(doc, "timeout"),
            dedup_key=_nullable_str(doc, "dedup_key"),
            headers=_headers(doc),
            extra=extra,
        )

    @classmethod
    def from_json(cls, data: str | bytes) -> Job:
        """Parse the JSON wire format; :class:`MalformedJobError` says what is wrong.

        Whatever goes wrong while decoding (invalid UTF-8 or JSON, nesting too
        deep, an integer too long, NaN or infinity, a lone surrogate) is a
        :class:`MalformedJobError`: a document is accepted only when it can be
        written back unchanged for its retry or dead letter.
        """
        try:
            # Strict UTF-8: json.loads would let encoded surrogates through.
            text = data if isinstance(data, str) else data.decode()
            job = cls.from_dict(_DECODER.decode(text))
            # The search only when it can match (it costs more than the decode of a small job).
            if (not text.isascii() or "\\u" in text) and _SURROGATE.search(text) is not None:
                _check_writable(job)
        except MalformedJobError:
            raise
        except Exception as exc:
            raise MalformedJobError(f"not valid JSON: {_describe_error(exc)}") from exc
        return job


_INFINITY = float("inf")

# _wire_text writes the document _ENCODER writes for a job without extra fields
# in one f-string, at a bit over half the cost of encoding the dict (whose fifteen
# keys the encoder escapes and writes one by one). The text between the parts
# that change with every job is kept per (task, queue, attempt, failures,
# max_retries, priority, timeout and its type): a "skeleton" of three pieces.
_WIRE_HEAD = f'{{"v":{WIRE_VERSION},"id":'
_SKELETONS: dict[tuple[Any, ...], tuple[str, str, str]] = {}
#: Bound on kept skeletons (task names come from jobs, so they are not trusted).
_MAX_SKELETONS = 1024


def _wire_text(job: Job) -> str | None:
    """The text ``_ENCODER.encode(job.to_dict())`` writes, or None where unsure.

    Only fields of the exact types this library builds are written here (a
    str, an int that is not a bool, a finite float, None); anything else,
    extra fields, or a value the encoder refuses returns None, and the caller
    encodes the dict as before, which also words any error.
    """
    if _ENCODE_FAST is None or job.extra:
        return None
    task, queue, attempt, failures, retries, priority, timeout = (
        job.task,
        job.queue,
        job.attempt,
        job.failures,
        job.max_retries,
        job.priority,
        job.timeout,
    )
    enqueued_at, run_at, dedup = job.enqueued_at, job.run_at, job.dedup_key
    # Exact types: True == 1 and 1 == 1.0 would share a skeleton otherwise.
    if not (
        type(task) is str
        and type(queue) is str
        and type(job.id) is str
        and type(attempt) is int
        and type(failures) is int
        and type(retries) is int
        and type(priority) is int
        and (dedup is None or type(dedup) is str)
        and type(enqueued_at) is float
        and -_INFINITY < enqueued_at < _INFINITY
    ):
        return None
    run_at_text = "null" if run_at is None else _number_text(run_at)
    if run_at_text is None:
        return None
    key = (task, queue, attempt, failures, retries, priority, timeout, type(timeout))
    skeleton = _SKELETONS.get(key) or _skeleton(key)
    if skeleton is None:
        return None
    after_task, after_queue, after_priority = skeleton
    args, kwargs, headers = job.args, job.kwargs, job.headers
    try:
        args_text = "".join(_ENCODE_FAST(args, 0)) if args or type(args) is not list else "[]"
        kwargs_text = (
            "".join(_ENCODE_FAST(kwargs, 0)) if kwargs or type(kwargs) is not dict else "{}"
        )
        headers_text = (
            "".join(_ENCODE_FAST(headers, 0)) if headers or type(headers) is not dict else "{}"
        )
    except Exception:  # refused by the encoder: the caller words it
        return None
    return (
        f"{_WIRE_HEAD}{encode_basestring(job.id)}{after_task}{args_text},"
        f'"kwargs":{kwargs_text}{after_queue}{enqueued_at!r},"run_at":'
        f"{run_at_text}{after_priority}"
        f"{'null' if dedup is None else encode_basestring(dedup)},"
        f'"headers":{headers_text}}}'
    )


def _skeleton(key: tuple[Any, ...]) -> tuple[str, str, str] | None:
    """The fixed pieces of a document between its id, arguments, times and dedup key."""
    task, queue, attempt, failures, retries, priority, timeout, _ = key
    timeout_text = "null" if timeout is None else _number_text(timeout)
    if timeout_text is None:
        return None
    skeleton = (
        f',"task":{encode_basestring(task)},"args":',
        f',"queue":{encode_basestring(queue)},"attempt":{attempt},"failures":{failures},'
        f'"max_retries":{retries},"enqueued_at":',
        f',"priority":{priority},"timeout":{timeout_text},"dedup_key":',
    )
    if len(_SKELETONS) < _MAX_SKELETONS:
        _SKELETONS[key] = skeleton
    return skeleton


def _number_text(value: Any) -> str | None:
    """A finite float or a non-bool int as the encoder writes it; None for anything else."""
    kind = type(value)
    if (kind is float and -_INFINITY < value < _INFINITY) or kind is int:
        return repr(value)
    return None


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (_INFINITY, -_INFINITY):
        raise MalformedJobError(f"not valid JSON: the number {text[:40]} is too large for a float")
    return value


def _refuse_constant(name: str) -> Any:
    raise MalformedJobError(f"not valid JSON: {name} (a job cannot contain NaN or Infinity)")


# Built once: json.loads makes a new decoder per call when given options.
_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_refuse_constant)


def _check_writable(job: Job) -> None:
    """Refuse a decoded job that the encoder could not write back."""
    try:
        job.to_bytes()
    except JobSerializationError as exc:
        raise MalformedJobError(f"cannot be written back as JSON: {exc}") from exc


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply to decode"
    if isinstance(exc, ValueError):  # JSONDecodeError, UnicodeDecodeError, int digit limit
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# Every field of the wire document, in one C call (a KeyError when one is missing).
_WIRE_FIELDS = operator.itemgetter(*_FIELD_NAMES)


def _well_formed(doc: dict[str, Any]) -> Job | None:
    """The job if ``doc`` is exactly what this library writes, else None.

    A cheap check of the common case; anything unusual (missing optional
    fields, unknown fields, odd types) goes through the field-by-field
    validation that explains what is wrong.
    """
    if len(doc) != len(_KNOWN_FIELDS):
        return None
    try:
        (
            version,
            job_id,
            task,
            args,
            kwargs,
            queue,
            attempt,
            failures,
            retries,
            enqueued_at,
            run_at,
            priority,
            timeout,
            dedup,
            headers,
        ) = _WIRE_FIELDS(doc)
    except KeyError:
        return None
    if not (
        version == WIRE_VERSION
        and type(job_id) is str
        and job_id
        and type(task) is str
        and task
        and type(args) is list
        and type(kwargs) is dict
        and type(queue) is str
        and type(attempt) is int
        and type(retries) is int
        and type(failures) is int
        and type(enqueued_at) is float
        and type(priority) is int
        and MIN_PRIORITY <= priority <= MAX_PRIORITY
        and (run_at is None or type(run_at) is float)
        and (timeout is None or type(timeout) is float)
        and (dedup is None or type(dedup) is str)
        and type(headers) is dict
        and all(type(v) is str for v in headers.values())
    ):
        return None
    return Job(
        task,
        args,
        kwargs,
        queue,
        job_id,
        attempt,
        retries,
        enqueued_at,
        run_at,
        priority,
        timeout,
        dedup,
        headers,
        {},
        failures,
    )


def _require(doc: dict[str, Any], key: str, kind: type) -> Any:
    if key not in doc:
        raise MalformedJobError(f"missing required field {key!r}")
    value = doc[key]
    if not isinstance(value, kind) or (kind is str and not value):
        raise MalformedJobError(f"field {key!r} must be a non-empty {kind.__name__}, got {value!r}")
    return value


def _optional(doc: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = doc.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedJobError(f"field {key!r} must be {kind.__name__}, got {value!r}")
    return value


def _number(doc: dict[str, Any], key: str, default: float) -> float:
    value = _nullable_number(doc, key)
    return default if value is None else value


def _nullable_number(doc: dict[str, Any], key: str) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedJobError(f"field {key!r} must be a number or null, got {value!r}")
    return float(value)


def _nullable_str(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None or isinstance(value, str):
        return value
    raise MalformedJobError(f"field {key!r} must be a string or null, got {value!r}")


def _priority(doc: dict[str, Any]) -> int:
    value = _optional(doc, "priority", int, 0)
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise MalformedJobError(
            f"field 'priority' must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {value}"
        )
    return int(value)


def _headers(doc: dict[str, Any]) -> dict[str, str]:
    value = _optional(doc, "headers", dict, {})
    for k, v in value.items():
        if not isinstance(v, str):
            raise MalformedJobError(f"header {k!r} must be a string, got {v!r}")
    return dict(value)


def _describe_unserialisable(job: Job, exc: Exception) -> str:
    """Find which argument JSON refused, so the error can name it."""
    if isinstance(exc, RecursionError):
        exc = ValueError("nested too deeply to encode")
    elif isinstance(exc, UnicodeEncodeError):
        exc = ValueError("a string contains a lone surrogate, which UTF-8 cannot carry")
    for index, value in enumerate(job.args):
        if not _json_ok(value):
            return (
                f"task {job.task!r}: positional argument {index} "
                f"({type(value).__name__}) is not JSON-serialisable: {exc}"
            )
    for name, value in job.kwargs.items():
        if not _json_ok(value):
            return (
                f"task {job.task!r}: argument {name!r} "
                f"({type(value).__name__}) is not JSON-serialisable: {exc}"
            )
    return f"task {job.task!r}: job is not JSON-serialisable: {exc}"


def _json_ok(value: Any) -> bool:
    try:
        _ENCODER.encode(value).encode()
    except Exception:
        return False
    return True
