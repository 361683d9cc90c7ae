"""Reading query strings and forms: times, states, numbers; errors say what is wrong."""

from __future__ import annotations

from datetime import UTC, datetime

from lexigram.tasks.control import JobState


class BadInput(ValueError):
    """A query or form field the dashboard cannot use; shown to the user as a 400 page."""


def optional_text(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def moment(field: str, value: str | None) -> float | None:
    """``2024-05-01T10:00`` (a datetime-local input, read as UTC) or epoch seconds."""
    text = optional_text(value)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(
            f"{field}: {text!r} is not a time (use 2024-05-01T10:00, read as UTC)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def moment_input(value: float | None) -> str:
    """A time as a datetime-local input's value (UTC)."""
    if value is None:
        return ""
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M")


def state(value: str | None) -> JobState | None:
    text = optional_text(value)
    if text is None:
        return None
    try:
        return JobState(text)
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        raise BadInput(f"state: {text!r} is not a job state (one of {known})") from None


def whole(field: str, value: str | None, default: int, *, low: int = 0, high: int) -> int:
    text = optional_text(value)
    if text is None:
        return default
    try:
        number = int(text)
    except ValueError:
        raise BadInput(f"{field}: {text!r} is not a whole number") from None
    if not low <= number <= high:
        raise BadInput(f"{field}: {number} is out of range ({low} to {high})")
    return number
