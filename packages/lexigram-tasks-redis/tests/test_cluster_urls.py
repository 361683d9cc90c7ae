"""redis+cluster:// URLs, the hash-tagged key layout and shard placement (no server needed)."""

from __future__ import annotations

import inspect

import pytest

from lexigram.tasks.errors import ConfigurationError
from lexigram.tasks.job import Job
from lexigram.tasks.protocol import Capability
from lexigram.tasks.redis import RedisTaskQueue, validate_url
from lexigram.tasks.redis._cluster import parse_cluster_url
from lexigram.tasks.redis._shards import ShardedRedisTaskQueue
from lexigram.tasks.redis.connection import hash_tagged
from lexigram.tasks.redis.keys import QueueKeys


def test_a_cluster_url_names_its_nodes_credentials_and_options() -> None:
    nodes, options = parse_cluster_url(
        "rediss+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2,[::1]:7002/0?client_name=w1"
    )
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)]
    assert options["username"] == "app" and options["password"] == "s3cret"
    assert options["ssl"] is True and options["client_name"] == "w1"
    assert "db" not in options


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+cluster:///0", "names no node"),
        ("redis+cluster://h:7000/3", "only database 0"),
        ("redis+cluster://h:70000", "no valid port"),
        ("redis+cluster://:pw@:7000", "has no host"),
    ],
)
def test_a_bad_cluster_url_says_what_is_wrong_without_the_password(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as caught:
        validate_url(url)
    assert "pw" not in str(caught.value).replace("***", "")


def test_the_cluster_layout_puts_every_key_of_a_queue_under_its_tag() -> None:
    plain, tagged = QueueKeys.for_queue("mail"), QueueKeys.for_queue("mail", tag="mail:2")
    assert plain.ready == "rq:queue:mail" and plain.job("x") == "rq:job:x"
    assert plain.queues == "rq:queues"  # rq's shared set, as rq has it
    assert tagged.ready == "rq:queue:{mail:2}"
    assert tagged.job("x") == "rq:job:{mail:2}:x"
    assert tagged.queues == "lexigram:queue:{mail:2}:queues"  # a stand-in of its own
    for key in [*tagged.as_list(), tagged.workers, tagged.worker("w")]:
        assert key.partition("{")[2].partition("}")[0] == "mail:2", key
    assert len(tagged.as_list()) == 12


def test_shards_place_a_job_by_its_dedup_key_or_id() -> None:
    queue = RedisTaskQueue("redis+cluster://localhost:7000", "mail", shards=4)
    assert isinstance(queue, ShardedRedisTaskQueue) and isinstance(queue, RedisTaskQueue)
    assert repr(queue).endswith("queue_name='mail', shards=4)")
    assert [lane.keys.ready for lane in queue.lanes] == [f"rq:queue:{{mail:{i}}}" for i in range(4)]
    same_key = {queue._lane_of(Job(task="t", dedup_key="k")) for _ in range(20)}
    assert len(same_key) == 1
    by_id = {queue._lane_of(Job(task="t")) for _ in range(200)}
    assert by_id == {0, 1, 2, 3}
    assert Capability.PRIORITY not in queue.capabilities
    assert Capability.PRIORITY in RedisTaskQueue.capabilities


def test_one_shard_is_a_plain_queue_and_the_rq_layout_stays_off_the_cluster() -> None:
    assert type(RedisTaskQueue("redis+cluster://localhost:7000", "mail")) is RedisTaskQueue
    assert RedisTaskQueue("redis+cluster://localhost:7000", "mail").keys.ready == (
        "rq:queue:{mail}"
    )
    assert RedisTaskQueue("redis://localhost/0", "mail").keys.ready == "rq:queue:mail"


def test_store_prefixes_get_a_hash_tag_on_a_cluster_only() -> None:
    cluster = "redis+cluster://localhost:7000"
    assert hash_tagged(cluster, "lexigram:state") == "{lexigram:state}"
    assert hash_tagged(cluster, "app:{tenant}:dlq") == "app:{tenant}:dlq"
    assert hash_tagged("redis://localhost/0", "lexigram:state") == "lexigram:state"


def test_the_constructor_keywords_stay_the_configuration_keys() -> None:
    # RedisTaskQueue.__new__ picks the sharded class; the signature the config
    # reads (and refuses unknown keys with) is still __init__'s.
    parameters = inspect.signature(RedisTaskQueue).parameters
    assert {"redis_url", "queue_name", "shards", "wait_replicas"} <= set(parameters)
    assert not any(p.kind is p.VAR_KEYWORD for p in parameters.values())
