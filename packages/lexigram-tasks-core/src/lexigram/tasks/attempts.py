"""A job's attempt history: the records the worker writes, how backends store them, and
how the provider completes the history it reads (``Capability.ATTEMPTS``).

The worker builds a :class:`~lexigram.tasks.control.JobAttempt` only for an
attempt that did not succeed (failed, timed out, set aside) and hands it to the
backend on the ack or nack it makes anyway (``Delivery.attempt_record``); a
successful or cancelled attempt costs no record, only the worker id the
backend stores with the job's end. The backend keeps the records as one JSON
object per line (:func:`encode_attempt`), the last ``MAX_ATTEMPTS_KEPT``.
:func:`complete_history` then adds what the job's own fields say: the attempt
running now or the last one (succeeded, cancelled), and attempts whose worker
died before reporting (``lease_lost``). A backend of its own uses
:func:`encode_attempt` / :func:`decode_attempts` (or :func:`append_attempt`
on a list it keeps) and declares the capability; docs/jobs.md has the format.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lexigram.tasks.control import (
    MAX_ATTEMPTS_KEPT,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_TRACEBACK_CHARS,
    AttemptOutcome,
    JobAttempt,
    JobError,
    JobInfo,
    JobState,
)

__all__ = [
    "append_attempt",
    "attempt_from_dict",
    "bounded_error",
    "complete_history",
    "decode_attempts",
    "encode_attempt",
]

_TRUNCATED = "[... traceback cut to its last {} characters ...]\n"

#: The outcome of a job's last attempt read from the job's own state.
_FROM_STATE = {
    JobState.RUNNING: AttemptOutcome.RUNNING,
    JobState.SUCCEEDED: AttemptOutcome.COMPLETED,
    JobState.CANCELLED: AttemptOutcome.CANCELLED,
    JobState.FAILED: AttemptOutcome.FAILED,
    JobState.DEAD: AttemptOutcome.DEAD,
}


def bounded_error(error_type: str, message: str, traceback: str | None = None) -> JobError:
    """A :class:`JobError` cut to the documented sizes (message head, traceback tail)."""
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[: MAX_ERROR_MESSAGE_CHARS - 3] + "..."
    if traceback is not None and len(traceback) > MAX_TRACEBACK_CHARS:
        traceback = _TRUNCATED.format(MAX_TRACEBACK_CHARS) + traceback[-MAX_TRACEBACK_CHARS:]
    return JobError(error_type, message, traceback or None)


def encode_attempt(attempt: JobAttempt) -> str:
    """One attempt as a one-line JSON object (newlines inside strings are escaped)."""
    return json.dumps(attempt.to_dict(), separators=(",", ":"), ensure_ascii=False)


def attempt_from_dict(data: Mapping[str, Any]) -> JobAttempt:
    """The :class:`JobAttempt` of a stored record (``ValueError``, ``KeyError`` or
    ``TypeError`` if it is not one)."""
    error = data.get("error")
    return JobAttempt(
        number=int(data["number"]),
        outcome=AttemptOutcome(data["outcome"]),
        worker_id=_text_or_none(data.get("worker_id")),
        started_at=_float_or_none(data.get("started_at")),
        ended_at=_float_or_none(data.get("ended_at")),
        error=None
        if not isinstance(error, Mapping)
        else JobError(
            str(error.get("type", "")),
            str(error.get("message", "")),
            _text_or_none(error.get("traceback")),
        ),
        will_retry=bool(data.get("will_retry", False)),
    )


def decode_attempts(stored: str | Iterable[Any] | None) -> list[JobAttempt]:
    """The records of a stored history, oldest first: JSON lines, a JSON array, or a list.

    A record that cannot be read is skipped (one bad record must not hide the job).
    """
    if not stored:
        return []
    items: Iterable[Any] = stored
    if isinstance(stored, str):
        try:  # a JSON array (PostgreSQL's jsonb), else JSON lines
            items = json.loads(stored) if stored.startswith("[") else stored.splitlines()
        except ValueError:
            return []
    found = []
    for item in items:
        try:
            data = json.loads(item) if isinstance(item, str | bytes) else item
            if isinstance(data, Mapping):
                found.append(attempt_from_dict(data))
        except (ValueError, KeyError, TypeError):
            continue
    return found[-MAX_ATTEMPTS_KEPT:]


def append_attempt(history: Sequence[JobAttempt], attempt: JobAttempt) -> list[JobAttempt]:
    """``history`` with ``attempt`` added, the oldest dropped past ``MAX_ATTEMPTS_KEPT``."""
    return [*history, attempt][-MAX_ATTEMPTS_KEPT:]


def complete_history(info: JobInfo) -> JobInfo:
    """``info`` with its attempt history completed from the job's own fields.

    Adds the attempt numbers ``1..info.attempt`` the records lack (only above
    the oldest record once the history is full): the last one from the job's
    state (running, completed, cancelled, failed), a pending job's last one
    and every earlier one as ``lease_lost`` (its worker died before
    reporting). Fills ``worker_id`` from the last attempt when it is unknown.
    Call it only for a backend that records attempts (``Capability.ATTEMPTS``).
    """
    recorded = {attempt.number: attempt for attempt in info.attempts}
    first = 1
    if len(info.attempts) >= MAX_ATTEMPTS_KEPT:
        first = min(recorded)
    attempts = []
    for number in range(first, info.attempt + 1):
        found = recorded.pop(number, None)
        if found is None:
            found = _missing(info, number)
        attempts.append(found)
    attempts.extend(sorted(recorded.values(), key=lambda a: a.number))  # numbers past .attempt
    worker_id = info.worker_id
    if worker_id is None and attempts and attempts[-1].outcome is not AttemptOutcome.LEASE_LOST:
        worker_id = attempts[-1].worker_id
    return dataclasses.replace(info, attempts=tuple(attempts), worker_id=worker_id)


def _missing(info: JobInfo, number: int) -> JobAttempt:
    """An attempt no record holds: the last one as the job's state tells, else a lost one."""
    outcome = _FROM_STATE.get(info.state) if number == info.attempt else None
    if outcome is None:
        started = info.started_at if number == info.attempt else None
        return JobAttempt(number, AttemptOutcome.LEASE_LOST, started_at=started)
    ended = None if outcome is AttemptOutcome.RUNNING else info.finished_at
    error = info.error if outcome in (AttemptOutcome.FAILED, AttemptOutcome.DEAD) else None
    return JobAttempt(number, outcome, info.worker_id, info.started_at, ended, error)


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _float_or_none(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
