"""Multi-host DSNs without a server: how they are read, refused and reported."""

from __future__ import annotations

import pytest

from lexigram.tasks.errors import BackendConnectionError, ConfigurationError
from lexigram.tasks.postgres import PostgresTaskQueue
from lexigram.tasks.postgres._hosts import Host, hosts, wants_writable
from lexigram.tasks.postgres.connection import open_connection, open_pool
from lexigram.tasks.postgres.results import PostgresResultStore
from lexigram.tasks.postgres.state_store import PostgresJobStateStore


def test_hosts_are_read_in_order_with_their_ports() -> None:
    dsn = "postgresql://app:pw@db1:5432,db2,[::1]:5434,%2Frun%2Fpostgresql/tasks"
    assert hosts(dsn) == [
        Host("db1", 5432),
        Host("db2", None),
        Host("::1", 5434),
        Host("/run/postgresql", None),
    ]
    assert [str(h) for h in hosts(dsn)[:3]] == ["db1:5432", "db2", "[::1]:5434"]


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        ("postgresql://app:s3cret@db1:5432,,db2/tasks", "host 2 of 3 is empty"),
        ("postgresql://app:s3cret@db1:5432,db2:99999/tasks", "port of host 2 of 2 ('99999')"),
        ("postgresql://app:s3cret@db1,db2:x/tasks", "port of host 2 of 2 ('x')"),
        ("postgresql://app:s3cret@db1,[::1/tasks", "cannot be read"),
    ],
    ids=["empty-host", "port-out-of-range", "port-not-a-number", "unclosed-ipv6"],
)
def test_a_bad_host_list_is_refused_when_the_queue_is_made(dsn: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        PostgresTaskQueue(dsn)
    message = str(caught.value)
    assert problem in message
    assert "s3cret" not in message


@pytest.mark.parametrize("target", ["standby", "read-only", "prefer-standby"])
def test_a_target_that_cannot_write_is_refused_by_every_store(target: str) -> None:
    dsn = f"postgresql://app:s3cret@db1,db2/tasks?target_session_attrs={target}"
    for make in (PostgresTaskQueue, PostgresResultStore, PostgresJobStateStore):
        with pytest.raises(ConfigurationError, match="cannot write") as caught:
            make(dsn)
        assert "s3cret" not in str(caught.value)


def test_an_unknown_target_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="is not one of any, primary, standby"):
        PostgresTaskQueue("postgresql://db1,db2/tasks?target_session_attrs=master")


def test_several_hosts_ask_for_a_writable_server_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PGTARGETSESSIONATTRS", raising=False)
    assert wants_writable("postgresql://db1,db2/tasks")
    assert not wants_writable("postgresql://db1/tasks")  # one server: as before
    assert wants_writable("postgresql://db1/tasks?target_session_attrs=primary")
    assert not wants_writable("postgresql://db1,db2/tasks?target_session_attrs=any")


async def test_when_no_host_answers_the_error_names_each_and_hides_the_password() -> None:
    # Nothing listens on these loopback ports (the failover tests' range, unused here).
    dsn = "postgresql://app:s3cret@127.0.0.1:5436,127.0.0.1:5437/tasks"
    for connect in (
        lambda: open_connection(dsn, timeout=2),
        lambda: open_pool(dsn, min_size=1, max_size=1, timeout=2),
    ):
        with pytest.raises(BackendConnectionError) as caught:
            await connect()
        message = str(caught.value)
        assert "no host could be used" in message
        assert "127.0.0.1:5436: ConnectionRefusedError" in message
        assert "127.0.0.1:5437: ConnectionRefusedError" in message
        assert "s3cret" not in message
        assert "app:***@127.0.0.1:5436,127.0.0.1:5437/tasks" in message
