"""Command-line details that need no application: times and record descriptions."""

from __future__ import annotations

import argparse
import time

import pytest

from lexigram.tasks.dlq.cli import describe, parse_moment
from lexigram.tasks.dlq.testing import make_record


def test_moments_are_iso_times_or_durations_ago() -> None:
    assert parse_moment("2024-05-01T10:00:00+02:00") == 1714550400.0
    assert parse_moment("2024-05-01T08:00:00") == 1714550400.0  # naive means UTC
    assert parse_moment("2024-05-01") == 1714521600.0
    assert parse_moment("2h") == pytest.approx(time.time() - 7200, abs=5)
    assert parse_moment("1.5d") == pytest.approx(time.time() - 129600, abs=5)
    with pytest.raises(argparse.ArgumentTypeError, match="nor a duration"):
        parse_moment("yesterday")


def test_describe_shows_the_error_the_traceback_and_the_job() -> None:
    text = describe(make_record(task="mail.send", error_type="SMTPError"))
    assert "error:       SMTPError: boom" in text
    assert "Traceback (most recent call last)" in text
    assert '"task": "mail.send"' in text
    assert '"tenant": "acme"' in text  # unknown job fields are kept and shown
    malformed = describe(make_record(task=None, payload=b"\xffgarbage"))
    assert "payload (not a valid job):" in malformed
    assert "garbage" in malformed
