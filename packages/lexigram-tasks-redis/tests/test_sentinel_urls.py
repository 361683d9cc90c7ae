"""redis+sentinel:// URLs: what they say, and errors that name the bad part (no server needed)."""

from __future__ import annotations

import pytest

from lexigram.tasks import ConfigurationError
from lexigram.tasks.redis import RedisTaskQueue, sentinel_url, validate_url
from lexigram.tasks.redis._sentinel import parse_sentinel_url
from lexigram.tasks.redis.connection import redact, resolve_url


def test_a_full_url_names_sentinels_service_database_and_both_credentials() -> None:
    target = parse_sentinel_url(
        "rediss+sentinel://app:s3cret@s1:26379,[::1]:26380,s3/my%2Fmaster/4"
        "?sentinel_password=pw2&sentinel_username=watcher&ssl_cert_reqs=none&client_name=x"
    )
    assert target.sentinels == (("s1", 26379), ("::1", 26380), ("s3", 26379))
    assert target.service_name == "my/master"
    master = target.master_options
    assert (master["db"], master["username"], master["password"]) == (4, "app", "s3cret")
    assert master["ssl"] is True and master["ssl_cert_reqs"] == "none"
    assert master["client_name"] == "x"
    sentinel = target.sentinel_options
    assert (sentinel["username"], sentinel["password"]) == ("watcher", "pw2")
    assert sentinel["ssl"] is True and sentinel["ssl_cert_reqs"] == "none"


def test_defaults_database_zero_no_tls_and_sentinels_without_credentials() -> None:
    target = parse_sentinel_url("redis+sentinel://:pw@s1/mymaster")
    assert target.master_options["db"] == 0 and "ssl" not in target.master_options
    assert target.master_options["password"] == "pw"
    assert target.sentinel_options == {"ssl": False}


def test_sentinel_ssl_can_differ_from_the_master() -> None:
    target = parse_sentinel_url("rediss+sentinel://s1/m?sentinel_ssl=false")
    assert target.master_options["ssl"] is True
    assert target.sentinel_options["ssl"] is False


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis+sentinel:///mymaster/0", "names no sentinel"),
        ("redis+sentinel://s1:26379", "names no service"),
        ("redis+sentinel://s1:26379//0", "names no service"),
        ("redis+sentinel://s1:26379/mymaster/zero", "database 'zero'"),
        ("redis+sentinel://s1:26379/mymaster/0/extra", "more than /service_name/db"),
        ("redis+sentinel://s1:port/mymaster", "sentinel 's1:port' has no valid port"),
        ("redis+sentinel://s1:26379,:26380/mymaster", "sentinel ':26380' has no host"),
        ("redis+sentinel://s1:99999/mymaster", "no valid port ('99999')"),
        ("redis+sentinel://s1/mymaster?sentinel_ssl=maybe", "sentinel_ssl='maybe'"),
        ("redis+sentinel://s1/mymaster?socket_timeout=soon", "socket_timeout"),
    ],
)
def test_a_bad_url_is_refused_at_construction_naming_the_bad_part(url: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match="Sentinel URL") as caught:
        RedisTaskQueue(url)
    assert named in str(caught.value)


def test_errors_and_reprs_never_show_either_password() -> None:
    url = "redis+sentinel://:hunter2@s1:x/m?sentinel_password=swordfish"
    with pytest.raises(ConfigurationError) as caught:
        validate_url(url)
    assert "hunter2" not in str(caught.value) and "swordfish" not in str(caught.value)
    shown = redact("redis+sentinel://:hunter2@s1/m?a=1&sentinel_password=swordfish&b=2")
    assert shown == "redis+sentinel://:***@s1/m?a=1&sentinel_password=***&b=2"
    queue = RedisTaskQueue("redis+sentinel://:hunter2@s1/m?sentinel_password=swordfish")
    assert "hunter2" not in repr(queue) and "swordfish" not in repr(queue)


def test_another_scheme_lists_the_sentinel_one() -> None:
    with pytest.raises(ConfigurationError, match=r"redis\+sentinel://"):
        validate_url("sentinel://s1:26379/mymaster")


def test_sentinel_url_builds_the_url_from_a_list_and_a_base() -> None:
    assert (
        sentinel_url(["s1:26379", ("s2", 26380), ("::1", 26381)], "mymaster")
        == "redis+sentinel://s1:26379,s2:26380,[::1]:26381/mymaster/0"
    )
    built = sentinel_url([("s1", 1)], "m", base="rediss://user:pw@ignored:6379/3?client_name=a")
    assert built == "rediss+sentinel://user:pw@s1:1/m/3?client_name=a"
    assert parse_sentinel_url(built).master_options["db"] == 3


def test_keywords_make_the_same_url_a_component_keeps() -> None:
    queue = RedisTaskQueue(
        "redis://:pw@localhost/2", sentinels=["s1:26379", "s2:26379"], service_name="m"
    )
    assert queue.redis_url == "redis+sentinel://:pw@s1:26379,s2:26379/m/2"
    assert "pw" not in repr(queue)


@pytest.mark.parametrize(
    ("redis_url", "sentinels", "service_name", "message"),
    [
        ("redis://localhost", ["s1"], None, "go together"),
        ("redis://localhost", None, "m", "go together"),
        ("redis://localhost", [], "m", "non-empty list"),
        ("redis://localhost", "s1:26379", "m", "non-empty list"),
        ("redis+sentinel://s1/m", ["s2"], "m", "cannot go with sentinels="),
        ("redis://localhost", ["s1"], "", "service_name must name"),
    ],
)
def test_keywords_that_do_not_fit_are_refused(
    redis_url: str, sentinels: object, service_name: str | None, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        resolve_url(redis_url, sentinels, service_name)  # type: ignore[arg-type]


def test_wait_options_are_checked() -> None:
    with pytest.raises(ValueError, match="wait_replicas"):
        RedisTaskQueue(wait_replicas=-1)
    with pytest.raises(ValueError, match="wait_timeout"):
        RedisTaskQueue(wait_replicas=1, wait_timeout=0)
