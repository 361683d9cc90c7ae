"""The attempt history: bounded records, their stored form, the history the provider completes."""

from __future__ import annotations

from lexigram.tasks.attempts import (
    append_attempt,
    bounded_error,
    complete_history,
    decode_attempts,
    encode_attempt,
)
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

FAILED_1 = JobAttempt(
    1, AttemptOutcome.RETRYING, "w1", 10.0, 11.5, JobError("E", "m\nx", "Traceback\n"), True
)


def test_errors_are_cut_to_the_documented_sizes_keeping_the_tracebacks_end() -> None:
    tb = "first line\n" + "z" * (MAX_TRACEBACK_CHARS * 3) + "\nValueError: the end"
    error = bounded_error("ValueError", "m" * 5000, tb)
    assert len(error.message) == MAX_ERROR_MESSAGE_CHARS
    assert error.traceback is not None
    assert error.traceback.endswith("ValueError: the end")
    assert "first line" not in error.traceback
    assert len(error.traceback) < MAX_TRACEBACK_CHARS + 100


def test_a_record_is_one_json_line_and_reads_back_the_same() -> None:
    line = encode_attempt(FAILED_1)
    assert "\n" not in line
    assert decode_attempts(line + "\n" + line) == [FAILED_1, FAILED_1]
    assert decode_attempts([FAILED_1.to_dict()]) == [FAILED_1]
    assert FAILED_1.duration == 1.5


def test_a_bad_record_is_skipped_not_fatal() -> None:
    assert decode_attempts('{"number": "x"}\nnot json\n' + encode_attempt(FAILED_1)) == [FAILED_1]
    assert decode_attempts(None) == []


def test_the_history_keeps_the_last_attempts() -> None:
    history: list[JobAttempt] = []
    for n in range(1, MAX_ATTEMPTS_KEPT + 6):
        history = append_attempt(history, JobAttempt(n, AttemptOutcome.RETRYING))
    assert [a.number for a in history] == list(range(6, MAX_ATTEMPTS_KEPT + 6))


def _info(
    state: JobState, attempt: int, *recorded: JobAttempt, worker: str | None = None
) -> JobInfo:
    return JobInfo(
        id="j",
        queue="q",
        task="t",
        state=state,
        attempt=attempt,
        started_at=20.0,
        finished_at=21.0,
        worker_id=worker,
        attempts=recorded,
    )


def test_the_last_attempt_comes_from_the_jobs_state() -> None:
    info = complete_history(_info(JobState.SUCCEEDED, 2, FAILED_1, worker="w2"))
    assert info.attempts == (
        FAILED_1,
        JobAttempt(2, AttemptOutcome.COMPLETED, "w2", 20.0, 21.0),
    )
    running = complete_history(_info(JobState.RUNNING, 2, FAILED_1, worker="w2"))
    assert running.attempts[-1] == JobAttempt(2, AttemptOutcome.RUNNING, "w2", 20.0, None)


def test_attempts_without_a_record_were_lost_with_their_worker() -> None:
    info = complete_history(_info(JobState.QUEUED, 3, FAILED_1))
    assert [(a.number, a.outcome) for a in info.attempts] == [
        (1, AttemptOutcome.RETRYING),
        (2, AttemptOutcome.LEASE_LOST),
        (3, AttemptOutcome.LEASE_LOST),
    ]
    assert info.worker_id is None  # the last worker is not known


def test_the_worker_of_a_finished_job_is_its_last_attempts() -> None:
    last = JobAttempt(2, AttemptOutcome.FAILED, "w9", 1.0, 2.0, JobError("E", "m"))
    info = complete_history(_info(JobState.FAILED, 2, FAILED_1, last))
    assert info.attempts == (FAILED_1, last)
    assert info.worker_id == "w9"


def test_a_full_history_does_not_invent_the_trimmed_attempts() -> None:
    kept = [JobAttempt(n, AttemptOutcome.RETRYING) for n in range(11, 11 + MAX_ATTEMPTS_KEPT)]
    info = complete_history(_info(JobState.RUNNING, 11 + MAX_ATTEMPTS_KEPT, *kept))
    assert info.attempts[0].number == 11
    assert len(info.attempts) == MAX_ATTEMPTS_KEPT + 1


def test_a_job_never_started_has_no_attempts() -> None:
    assert complete_history(_info(JobState.QUEUED, 0)).attempts == ()


def test_a_json_array_reads_back_too() -> None:
    assert decode_attempts(f"[{encode_attempt(FAILED_1)}, 3]") == [FAILED_1]
    assert decode_attempts("[not json") == []
