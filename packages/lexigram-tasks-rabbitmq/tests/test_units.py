"""Unit tests of the parts that need no broker: the delay ladder, ack planning, message mapping."""

from __future__ import annotations

import datetime as dt
import re
from importlib.metadata import entry_points, version

import pytest
from pamqp import commands as spec

import lexigram.tasks.rabbitmq
from lexigram.tasks.errors import CapabilityNotSupportedError
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Capability
from lexigram.tasks.rabbitmq import RabbitMQTaskQueue, messages, topology
from lexigram.tasks.rabbitmq.leases import BoundedSet, ack_plan


def test_installed_metadata_matches_version_file() -> None:
    assert lexigram.tasks.rabbitmq.__version__ == version("lexigram-tasks-rabbitmq")


def test_registered_as_the_rabbitmq_backend_type() -> None:
    [ep] = [ep for ep in entry_points(group="lexigram.tasks.backends") if ep.name == "rabbitmq"]
    assert ep.load() is RabbitMQTaskQueue


def _topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: ``*`` is one word, ``#`` zero or more."""
    regex = re.escape(pattern).replace(r"\*", r"[^.]+").replace(r"\.\#", r"(\.[^.]+)*")
    return re.fullmatch(regex, key) is not None


def _ride(delay_ms: int) -> int:
    """Follow a message down the ladder as the broker would; return the total TTL."""
    key = topology.ladder_routing_key(delay_ms)
    level, waited = topology.ladder_top_level(delay_ms), 0
    while level >= 0:
        into_queue = _topic_matches(topology.ladder_binding_key(level, "1"), key)
        to_next = _topic_matches(topology.ladder_binding_key(level, "0"), key)
        assert into_queue != to_next, "each level routes a message exactly one way"
        if into_queue:
            waited += 1 << level
        level -= 1
    return waited


@pytest.mark.parametrize("delay_ms", [1, 3, 999, 1001, 30_001, 300_000 | 1, 2**32 - 1])
def test_the_ladder_holds_a_message_exactly_its_delay(delay_ms: int) -> None:
    assert _ride(delay_ms) == delay_ms


@pytest.mark.parametrize(
    ("seconds", "ms"),
    [(0.0001, 1), (0.001, 1), (0.002, 3), (1.0, 1001), (1.1, 1101), (2.5, 2501), (1e9, 2**32 - 1)],
)
def test_ladder_delays_are_whole_odd_milliseconds_never_shorter(seconds: float, ms: int) -> None:
    assert topology.ladder_delay_ms(seconds) == ms
    assert ms % 2 == 1


def test_ladder_queues_pass_messages_one_level_down() -> None:
    dest = topology.Destination("", "orders")
    top = topology.ladder_queue_arguments(
        "classic", prefix="orders.delay", level=5, destination=dest
    )
    assert top == {
        "x-queue-type": "classic",
        "x-message-ttl": 32,
        "x-dead-letter-exchange": "orders.delay.4",
    }
    bottom = topology.ladder_queue_arguments(
        "quorum", prefix="orders.delay", level=0, destination=dest
    )
    assert bottom["x-dead-letter-exchange"] == ""
    assert bottom["x-dead-letter-routing-key"] == "orders"
    assert bottom["x-dead-letter-strategy"] == "at-least-once"


def test_named_exchange_destinations_get_their_own_ladder() -> None:
    assert topology.Destination("", "q").ladder_prefix == "q.delay"
    assert topology.Destination("events", "orders.created").ladder_prefix == (
        "events.orders.created.delay"
    )


@pytest.mark.parametrize(
    ("to_ack", "outstanding", "expected"),
    [
        ([1, 2, 3], [1, 2, 3, 4], (3, [])),
        ([1, 2, 4], [1, 2, 3, 4], (2, [4])),
        ([2, 3], [1, 2, 3], (None, [2, 3])),
        ([5], [5, 6], (None, [5])),
        ([], [1], (None, [])),
        ([7, 8], [], (8, [])),
    ],
)
def test_ack_plan_covers_only_tags_being_acked(
    to_ack: list[int], outstanding: list[int], expected: tuple[int | None, list[int]]
) -> None:
    assert ack_plan(to_ack, outstanding) == expected


def test_bounded_set_forgets_the_oldest() -> None:
    remembered = BoundedSet(2)
    for body in (b"a", b"b", b"c"):
        remembered.add(body)
    assert len(remembered) == 2
    assert not remembered.take(b"a")
    assert remembered.take(b"c")
    assert not remembered.take(b"c")


def test_job_properties_describe_the_job_for_other_clients() -> None:
    job = Job(
        task="mail.send",
        id="abc",
        priority=4,
        enqueued_at=1_700_000_000.5,
        headers={"traceparent": "00-1-2-01"},
    )
    props = messages.job_properties(job, expiration_ms=500)
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert props.message_id == "abc"
    assert props.message_type == "mail.send"
    assert props.priority == 4
    assert props.headers == {"traceparent": "00-1-2-01"}
    assert props.expiration == "500"
    assert props.timestamp == dt.datetime.fromtimestamp(1_700_000_000, dt.UTC)


def test_redeliveries_come_from_the_flag_or_the_quorum_count() -> None:
    plain = spec.Basic.Properties()
    counted = spec.Basic.Properties(headers={"x-delivery-count": 3})
    assert messages.redeliveries(plain, False, quorum=False) == 0
    assert messages.redeliveries(plain, True, quorum=False) == 1
    assert messages.redeliveries(counted, True, quorum=True) == 3
    assert messages.redeliveries(plain, True, quorum=True) == 0


def test_a_message_published_again_drops_only_the_brokers_delivery_count() -> None:
    counted = spec.Basic.Properties(
        message_id="j1", priority=3, headers={"x-delivery-count": 2, "traceparent": "00-a-b-01"}
    )
    fresh = messages.without_delivery_count(counted)
    assert fresh.headers == {"traceparent": "00-a-b-01"}
    assert (fresh.message_id, fresh.priority) == ("j1", 3)
    assert counted.headers == {"x-delivery-count": 2, "traceparent": "00-a-b-01"}
    plain = spec.Basic.Properties(message_id="j2", headers={"a": 1})
    assert messages.without_delivery_count(plain) is plain
    assert messages.redeliveries(fresh, False, quorum=True) == 0


def test_trace_context_from_amqp_headers_fills_only_what_the_job_lacks() -> None:
    job = Job(task="t", headers={"tracestate": "mine"})
    props = spec.Basic.Properties(headers={"traceparent": "00-a-b-01", "tracestate": "theirs"})
    messages.adopt_trace_headers(job, props)
    assert job.headers == {"tracestate": "mine", "traceparent": "00-a-b-01"}


def test_dead_letters_read_our_reason_or_the_brokers() -> None:
    ours = spec.Basic.Properties(
        message_id="m",
        headers={
            messages.REASON_HEADER: "ValueError: nope",
            messages.FAILED_AT_HEADER: 12.5,
            messages.JOB_ID_HEADER: "job-1",
        },
    )
    dead = messages.to_dead_letter(b"{}", ours)
    assert (dead.reason, dead.failed_at, dead.job_id) == ("ValueError: nope", 12.5, "job-1")

    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    expired = spec.Basic.Properties(
        headers={"x-death": [{"reason": "expired", "queue": "q", "time": when}]}
    )
    body = Job(task="t", id="job-2").to_bytes()
    dead = messages.to_dead_letter(body, expired)
    assert (dead.reason, dead.failed_at, dead.job_id) == (
        "expired (in queue q)",
        when.timestamp(),
        "job-2",
    )


def test_capabilities_follow_the_queue_type() -> None:
    url = "amqp://guest:guest@localhost/"
    assert RabbitMQTaskQueue(url).capabilities == {Capability.DELAY}
    prioritised = RabbitMQTaskQueue(url, priorities=True)
    assert prioritised.capabilities == {Capability.DELAY, Capability.PRIORITY}
    assert RabbitMQTaskQueue(url, queue_type="quorum").capabilities == {Capability.DELAY}
    with pytest.raises(ValueError, match="quorum queues have no 0-9 priorities"):
        RabbitMQTaskQueue(url, queue_type="quorum", priorities=True)
    with pytest.raises(ValueError, match="delivery_limit needs"):
        RabbitMQTaskQueue(url, delivery_limit=3)


def test_a_priority_on_a_plain_classic_queue_names_the_setting() -> None:
    job = Job(task="report", queue="default", priority=5)
    with pytest.raises(CapabilityNotSupportedError, match=r"priorities=True"):
        RabbitMQTaskQueue("amqp://guest:guest@localhost/").check_supported(job)
    with pytest.raises(CapabilityNotSupportedError, match="does not support priority"):
        RabbitMQTaskQueue("amqp://localhost/", queue_type="quorum").check_supported(job)
    RabbitMQTaskQueue("amqp://localhost/", priorities=True).check_supported(job)


def test_repr_redacts_the_password() -> None:
    queue = RabbitMQTaskQueue("amqp://app:hunter2@rabbit:5672/prod", queue_name="q")
    assert "hunter2" not in repr(queue)
    assert "app:***@rabbit:5672" in repr(queue)


def test_every_constructor_argument_is_a_config_key() -> None:
    from lexigram.tasks import TaskProvider

    provider = TaskProvider.from_config(
        {
            "tasks": {
                "backend": {
                    "type": "rabbitmq",
                    "amqp_url": "amqp://guest:guest@localhost:5672/",
                    "queue_name": "orders",
                    "queue_type": "quorum",
                    "queues": ["urgent"],
                    "routes": {"shop.send_mail": "emails"},
                    "message_ttl": 60,
                    "delivery_limit": 5,
                    "queue_arguments": {"x-max-length": 100_000},
                }
            }
        }
    )
    queue = provider.queue
    assert isinstance(queue, RabbitMQTaskQueue)
    assert queue.consumed_queues == ("orders", "urgent")
    assert queue.routes == {"shop.send_mail": "emails"}
    assert (queue.queue_type, queue.message_ttl, queue.delivery_limit) == ("quorum", 60, 5)
    assert queue.queue_arguments == {"x-max-length": 100_000}
