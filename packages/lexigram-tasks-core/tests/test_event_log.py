"""EventLog, the file several worker processes of a test append to."""

from __future__ import annotations

from pathlib import Path

from lexigram.tasks.testing import EventLog


def test_a_line_still_being_written_is_left_for_the_next_read(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.log")
    log.write("start", "a")
    with log.path.open("a") as file:
        file.write("end a 12")  # another process's write, caught half-way
    assert [(line.event, line.key) for line in log.lines()] == [("start", "a")]
    with log.path.open("a") as file:
        file.write("34 1.5\n")
    assert [(line.event, line.key, line.pid) for line in log.lines()] == [
        ("start", "a", log.lines()[0].pid),
        ("end", "a", 1234),
    ]
