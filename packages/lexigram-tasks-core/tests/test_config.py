"""Configuration loading: the seed's YAML, interpolation, and load-time errors naming the key."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from lexigram.tasks import (
    BackendNotFoundError,
    ConfigurationError,
    MemoryResultStore,
    MemoryTaskQueue,
    TaskBackendRegistry,
    TaskProvider,
)
from lexigram.tasks.config import load_config
from lexigram.tasks.protocol import BaseTaskQueue


class UrlQueue(BaseTaskQueue):
    """Stands in for a networked backend: only its constructor matters to the loader."""

    system = "test"

    def __init__(
        self, url: str, queue_name: str = "default", *, pool_size: int = 10, tls: bool = False
    ) -> None:
        self.url = url
        self.queue_name = queue_name
        self.pool_size = pool_size
        self.tls = tls


def redis_like(redis_url: str, queue_name: str = "default") -> UrlQueue:
    return UrlQueue(redis_url, queue_name)


def amqp_like(amqp_url: str, queue_name: str = "default") -> UrlQueue:
    return UrlQueue(amqp_url, queue_name)


def postgres_like(postgres_dsn: str, queue_name: str = "default", schema: str = "x") -> UrlQueue:
    # "schema" would shadow a BaseModel attribute if the loader used parameter names as fields
    return UrlQueue(postgres_dsn, queue_name)


@pytest.fixture
def registry() -> TaskBackendRegistry:
    """Built-in type names bound to stand-ins, so these tests need no backend package."""
    reg = TaskBackendRegistry(load_entry_points=False)
    reg.register("memory", MemoryTaskQueue)
    reg.register("redis", redis_like)
    reg.register("rabbitmq", amqp_like)
    reg.register("postgres", postgres_like)
    reg.register("acme", UrlQueue)
    return reg


ENV = {
    "REDIS_URL": "redis://:s3cret@cache:6379/0",
    "AMQP_URL": "amqp://guest:guest@rabbit:5672/",
    "DATABASE_URL": "postgresql://app:pw@db/app",
}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # errors then name the file as "lexigram.yaml"


def write(tmp_path: Path, text: str, name: str = "lexigram.yaml") -> Path:
    (tmp_path / name).write_text(textwrap.dedent(text).lstrip())
    return Path(name)


def load(tmp_path: Path, text: str, registry: TaskBackendRegistry, **env: str) -> Any:
    return load_config(write(tmp_path, text), env={**ENV, **env}, registry=registry)


def error_of(tmp_path: Path, text: str, registry: TaskBackendRegistry, **env: str) -> str:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, text, registry, **env)
    return str(info.value)


# -- the seed's blocks ---------------------------------------------------------------


def test_seed_redis_block(tmp_path: Path, registry: TaskBackendRegistry) -> None:
    config = load(
        tmp_path,
        """
        tasks:
          backend:
            type: redis
            redis_url: "${REDIS_URL}"
            queue_name: default
          worker:
            worker_count: 4
            poll_interval: 0.5
        """,
        registry,
    )
    provider = config.create_provider()
    assert isinstance(provider, TaskProvider)
    assert provider.worker_count == 4 and provider.poll_interval == 0.5
    queue = provider.queue
    assert isinstance(queue, UrlQueue)
    assert (queue.url, queue.queue_name) == ("redis://:s3cret@cache:6379/0", "default")
    assert "s3cret" not in repr(config)


def test_seed_rabbitmq_and_postgres_blocks(tmp_path: Path, registry: TaskBackendRegistry) -> None:
    rabbit = load(
        tmp_path,
        """
        tasks:
          backend:
            type: rabbitmq
            amqp_url: "${AMQP_URL}"
            queue_name: default
          worker:
            worker_count: 4
        """,
        registry,
    ).create_provider()
    assert rabbit.worker_count == 4
    assert isinstance(rabbit.queue, UrlQueue) and rabbit.queue.url == ENV["AMQP_URL"]
    postgres = load(
        tmp_path,
        """
        tasks:
          backend:
            type: postgres
            postgres_dsn: "${DATABASE_URL}"
            queue_name: default
        """,
        registry,
    ).create_provider()
    assert postgres.worker_count == 1  # documented default
    assert isinstance(postgres.queue, UrlQueue) and postgres.queue.url == ENV["DATABASE_URL"]


def test_seed_multi_backend_block_routes_to_the_primary(
    tmp_path: Path, registry: TaskBackendRegistry
) -> None:
    provider = load(
        tmp_path,
        """
        tasks:
          backends:
            - name: primary
              primary: true
              type: redis
              redis_url: "${REDIS_URL}"
            - name: notifications
              type: rabbitmq
              amqp_url: "${AMQP_URL}"
        """,
        registry,
    ).create_provider()
    assert list(provider.backends) == ["primary", "notifications"]
    assert provider.primary == "primary"

    @provider.task(backend="notifications")
    async def notify() -> None: ...

    @provider.task
    async def other() -> None: ...

    assert provider._route(notify.name, None) is provider.backends["notifications"]
    assert provider._route(other.name, None) is provider.backends["primary"]


def test_first_backend_is_primary_when_none_is_marked(
    tmp_path: Path, registry: TaskBackendRegistry
) -> None:
    config = load(
        tmp_path,
        """
        tasks:
          backends:
            - {name: a, type: memory, queue_name: qa}
            - {name: b, type: memory, queue_name: qb}
        """,
        registry,
    )
    assert config.primary == "a"


def test_from_config_accepts_a_mapping_and_overrides() -> None:
    provider = TaskProvider.from_config(
        {"tasks": {"backend": {"type": "memory", "queue_name": "q1"}}},
        worker_count=3,
        shutdown_timeout=2,
    )
    assert isinstance(provider.queue, MemoryTaskQueue)
    assert provider.queue.queue_name == "q1"
    assert (provider.worker_count, provider.shutdown_timeout) == (3, 2)


def test_from_config_reads_a_file_with_the_default_registry(tmp_path: Path) -> None:
    path = write(tmp_path, "tasks:\n  backend:\n    type: memory\n")
    provider = TaskProvider.from_config(path)
    assert isinstance(provider.queue, MemoryTaskQueue)
    provider2 = TaskProvider.from_config(str(path))
    assert provider2.queue is not provider.queue  # every load builds new backends


def test_provider_settings_result_store_and_other_sections(
    tmp_path: Path, registry: TaskBackendRegistry
) -> None:
    config = load(
        tmp_path,
        """
        app_name: shop          # other sections of the file are left alone
        tasks:
          backend: {type: memory}
          worker:
            worker_count: 2
            poll_interval: 0.1
            default_timeout: 60
            shutdown_timeout: 5
            lease_seconds: 12
          result_store: {type: memory, ttl: 120}
          result_ttl: 60
          global_rate_limit: 500/s
          trace_links_only: true
          environment: staging
          strict: false
        """,
        registry,
    )
    provider = config.create_provider()
    assert (provider.worker_count, provider.poll_interval, provider.default_timeout) == (2, 0.1, 60)
    assert (provider.shutdown_timeout, provider.lease_seconds) == (5, 12)
    assert isinstance(provider.result_store, MemoryResultStore)
    assert provider.result_store.ttl == 120
    assert provider.result_ttl == 60
    assert provider.global_rate_limit is not None and provider.global_rate_limit.count == 500
    assert provider.telemetry.links_only is True
    assert (provider.environment, provider.strict) == ("staging", False)


# -- interpolation -------------------------------------------------------------------


def test_interpolation_defaults_partial_strings_and_escapes(
    tmp_path: Path, registry: TaskBackendRegistry
) -> None:
    config = load(
        tmp_path,
        """
        tasks:
          backend:
            type: acme
            url: "https://${HOST:-localhost}:${PORT:-8080}/$$literal"
            queue_name: ${QUEUE:-jobs}
            pool_size: ${POOL}
            tls: ${TLS:-no}
          worker:
            worker_count: ${WORKERS:-3}
        """,
        registry,
        HOST="api",
        POOL="7",
        QUEUE="",  # empty counts as unset for :-
    )
    queue = config.create_provider().queue
    assert isinstance(queue, UrlQueue)
    assert queue.url == "https://api:8080/$literal"
    assert queue.queue_name == "jobs"
    assert queue.pool_size == 7  # the string from the environment becomes the annotated int
    assert queue.tls is False
    assert config.worker.worker_count == 3


def test_missing_variables_are_all_named_with_key_and_line(
    tmp_path: Path, registry: TaskBackendRegistry
) -> None:
    message = error_of(
        tmp_path,
        """
        tasks:
          backends:
            - name: main
              type: acme
              url: "${ACME_URL}"
            - name: other
              type: acme
              url: "${OTHER_URL}"
        """,
        registry,
    )
    assert "lexigram.yaml:5: tasks.backends[0].url: environment variable ACME_URL is not set" in (
        message
    )
    assert "lexigram.yaml:8: tasks.backends[1].url: environment variable OTHER_URL" in message
    assert "${ACME_URL:-default}" in message


def test_malformed_reference_is_an_error(tmp_path: Path, registry: TaskBackendRegistry) -> None:
    message = error_of(tmp_path, "tasks:\n  backend: {type: acme, url: '${URL'}\n", registry)
    assert "tasks.backend.url: malformed variable reference '${URL'" in message


def test_interpolation_happens_after_parsing_so_values_cannot_inject_yaml(
    tmp_path: Path, registry: TaskBackendRegistry
) -> None:
    config = load(
        tmp_path,
        "tasks:\n  backend: {type: acme, url: '${EVIL}'}\n",
        registry,
        EVIL="x\n  worker: {worker_count: 99}",
    )
    assert config.worker.worker_count == 1
    assert config.backends["default"].options["url"].startswith("x\n")


# -- errors --------------------------------------------------------------------------


def test_unknown_backend_type_lists_registered_types_and_the_package(
    tmp_path: Path, registry: TaskBackendRegistry
) -> None:
    reg = TaskBackendRegistry(load_entry_points=False)
    reg.register("memory", MemoryTaskQueue)
    with pytest.raises(BackendNotFoundError) as info:
        load(tmp_path, "tasks:\n  backend:\n    type: redis\n    redis_url: x\n", reg)
    message = str(info.value)
    assert message.startswith("lexigram.yaml:3: tasks.backend.type: unknown backend type 'redis'")
    assert "registered types: 'memory'" in message
    assert "pip install lexigram-tasks-redis" in message
    with pytest.raises(BackendNotFoundError, match=r"unknown backend type 'kafka'.*'memory'"):
        load(tmp_path, "tasks:\n  backend: {type: kafka}\n", reg)


def test_unknown_backend_key_is_caught_for_third_party_backends_too(
    tmp_path: Path, registry: TaskBackendRegistry
) -> None:
    message = error_of(
        tmp_path,
        """
        tasks:
          backend:
            type: acme
            url: https://acme
            pool_sise: 3
        """,
        registry,
    )
    assert message.startswith(
        "lexigram.yaml:5: tasks.backend.pool_sise: unknown key for type 'acme'"
    )
    assert "did you mean 'pool_size'?" in message
    assert "accepted: url, queue_name, pool_size, tls" in message


def test_wrong_value_type_of_a_backend_key(tmp_path: Path, registry: TaskBackendRegistry) -> None:
    message = error_of(
        tmp_path,
        "tasks:\n  backend:\n    type: acme\n    url: u\n    pool_size: lots\n",
        registry,
    )
    assert message.startswith("lexigram.yaml:5: tasks.backend.pool_size: Input should be a valid")
    assert "(got 'lots')" in message


def test_missing_required_backend_key(tmp_path: Path, registry: TaskBackendRegistry) -> None:
    message = error_of(tmp_path, "tasks:\n  backend:\n    type: acme\n", registry)
    assert message == "lexigram.yaml:2: tasks.backend.url: required key is missing"


def test_errors_in_several_backends_are_reported_together(
    tmp_path: Path, registry: TaskBackendRegistry
) -> None:
    message = error_of(
        tmp_path,
        """
        tasks:
          backends:
            - {name: a, type: memory, queue: x}
            - {name: b, type: acme, url: 5}
        """,
        registry,
    )
    assert message.startswith("2 configuration errors:")
    assert "tasks.backends[0].queue: unknown key for type 'memory'; did you mean 'queue_name'?" in (
        message
    )
    assert "tasks.backends[1].url: Input should be a valid string (got 5)" in message


def test_wrong_worker_values_and_unknown_keys(
    tmp_path: Path, registry: TaskBackendRegistry
) -> None:
    message = error_of(
        tmp_path,
        """
        tasks:
          backend: {type: memory}
          worker:
            worker_count: four
            poll_intervall: 1
          global_rate_limit: 5/fortnight
        """,
        registry,
    )
    assert "lexigram.yaml:4: tasks.worker.worker_count: Input should be a valid integer" in message
    assert "lexigram.yaml:5: tasks.worker.poll_intervall: unknown key; did you mean " in message
    assert "'poll_interval'" in message
    assert "lexigram.yaml:6: tasks.global_rate_limit: invalid rate limit '5/fortnight'" in message


def test_worker_settings_in_the_wrong_place_get_a_hint(
    tmp_path: Path, registry: TaskBackendRegistry
) -> None:
    message = error_of(
        tmp_path,
        "tasks:\n  backend:\n    type: memory\n    worker:\n      worker_count: 4\n",
        registry,
    )
    assert "tasks.backend.worker: unknown key for type 'memory'; worker settings go under" in (
        message
    )
    message = error_of(tmp_path, "tasks:\n  backend: {type: memory}\n  worker_count: 4\n", registry)
    assert "tasks.worker_count: unknown key; worker settings go under tasks.worker" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tasks:\n  worker: {worker_count: 2}\n", "give either 'backend'"),
        (
            "tasks:\n  backend: {type: memory}\n  backends: [{name: a, type: memory}]\n",
            "not both",
        ),
        ("tasks:\n  backends: []\n", "tasks.backends: List should have at least 1 item"),
        (
            "tasks:\n  backends:\n    - {name: a, type: memory}\n    - {name: a, type: memory}\n",
            "lexigram.yaml:4: tasks.backends[1].name: duplicate name 'a'",
        ),
        (
            "tasks:\n  backends:\n"
            "    - {name: a, type: memory, primary: true}\n"
            "    - {name: b, type: memory, primary: true}\n",
            "tasks.backends[1].primary: only one backend can be primary (marked: 'a', 'b')",
        ),
        ("tasks:\n  backends:\n    - {type: memory}\n", "tasks.backends[0].name: required key"),
        ("other: 1\n", "missing key 'tasks'"),
        ("- a\n- b\n", "must be a mapping with a 'tasks' key, not list"),
        ("tasks:\n  backend: {type: memory\n", "lexigram.yaml:3: invalid YAML"),
        (
            "tasks:\n  backend: {type: memory}\n  result_store: {type: nope}\n",
            "tasks.result_store.type: unknown result store type 'nope'; registered types: 'memory'",
        ),
        (
            "tasks:\n  backend: {type: memory}\n  result_store: {type: memory, size: 3}\n",
            "tasks.result_store.size: unknown key for type 'memory'",
        ),
    ],
)
def test_structure_errors(
    tmp_path: Path, registry: TaskBackendRegistry, text: str, expected: str
) -> None:
    assert expected in error_of(tmp_path, text, registry)


def test_missing_file_and_redacted_values_in_errors(
    tmp_path: Path, registry: TaskBackendRegistry
) -> None:
    with pytest.raises(ConfigurationError, match=r"nowhere\.yaml: configuration file not found"):
        load_config(tmp_path / "nowhere.yaml")
    message = error_of(
        tmp_path,
        "tasks:\n  backend: {type: acme, url: u, tls: '${REDIS_URL}'}\n",
        registry,
    )
    assert "tasks.backend.tls" in message
    assert "s3cret" not in message and "redis://:***@cache" in message


def test_constructor_errors_are_configuration_errors(tmp_path: Path) -> None:
    def picky(url: str) -> MemoryTaskQueue:
        raise ValueError(f"cannot use {url}")

    reg = TaskBackendRegistry(load_entry_points=False)
    reg.register("picky", picky)
    config = load_config(
        write(tmp_path, "tasks:\n  backend: {type: picky, url: 'redis://:pw@h'}\n"),
        env={},
        registry=reg,
    )
    with pytest.raises(ConfigurationError) as info:
        config.create_provider()
    assert str(info.value) == (
        "lexigram.yaml:2: tasks.backend: cannot create the backend of type 'picky': "
        "cannot use redis://:***@h"
    )


def test_backends_taking_any_keyword_accept_every_key(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def open_factory(**options: Any) -> MemoryTaskQueue:
        seen.update(options)
        return MemoryTaskQueue()

    reg = TaskBackendRegistry(load_entry_points=False)
    reg.register("open", open_factory)
    config = load_config({"tasks": {"backend": {"type": "open", "a": 1, "b": "x"}}}, registry=reg)
    config.create_provider()
    assert seen == {"a": 1, "b": "x"}


def test_queue_and_backends_cannot_be_overridden() -> None:
    config = load_config({"tasks": {"backend": {"type": "memory"}}})
    with pytest.raises(TypeError, match="queue come"):
        config.create_provider(queue=MemoryTaskQueue())


def test_dead_letter_section_goes_to_the_dlq_package(tmp_path: Path) -> None:
    text = "tasks:\n  backend: {type: memory}\n  dead_letter:\n    storage: memory\n"
    try:
        from lexigram.tasks.dlq import DeadLetterQueue  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # core installed alone: the error says what to install
        with pytest.raises(ConfigurationError, match="pip install lexigram-tasks-dlq"):
            load_config(write(tmp_path, text))
        return
    provider = load_config(write(tmp_path, text)).create_provider()
    assert isinstance(provider.dead_letter, DeadLetterQueue)
    with pytest.raises(ConfigurationError) as info:
        load_config(write(tmp_path, text + "    colour: red\n"))
    assert str(info.value).startswith("lexigram.yaml:3: tasks.dead_letter: storage 'memory'")
    assert "'colour'" in str(info.value)


def test_backend_key_errors_come_with_the_other_errors_in_line_order(
    tmp_path: Path, registry: TaskBackendRegistry
) -> None:
    message = error_of(
        tmp_path,
        """
        tasks:
          worker:
            worker_count: four
          backends:
            - name: a
              type: acme
              urll: x
            - name: b
              type: kafka
        """,
        registry,
    )
    heading, *lines = message.splitlines()
    assert heading == "4 configuration errors:"
    assert lines[0].startswith("  lexigram.yaml:3: tasks.worker.worker_count")
    assert lines[1] == "  lexigram.yaml:5: tasks.backends[0].url: required key is missing"
    assert lines[2].startswith("  lexigram.yaml:7: tasks.backends[0].urll: unknown key for type")
    assert lines[3].startswith("  lexigram.yaml:9: tasks.backends[1].type: unknown backend type")


def test_every_problem_is_one_line_of_one_public_error(
    tmp_path: Path, registry: TaskBackendRegistry
) -> None:
    """A bad result_store used to raise a private class and hide the other problems."""
    with pytest.raises(ConfigurationError) as info:
        load(
            tmp_path,
            """
            tasks:
              backends:
                - {name: a, type: memory, queue: x}
                - {name: a, type: memory}
              result_store: {type: memory, size: 3}
              dead_letter: {storage: nowhere}
            """,
            registry,
        )
    error = info.value
    assert type(error) is ConfigurationError
    assert error.problems[0].startswith("lexigram.yaml:3: tasks.backends[0].queue: unknown key")
    assert error.problems[1] == "lexigram.yaml:4: tasks.backends[1].name: duplicate name 'a'"
    assert error.problems[2].startswith("lexigram.yaml:5: tasks.result_store.size: unknown key")
    assert error.problems[3].startswith("lexigram.yaml:6: tasks.dead_letter")
    assert len(error.problems) == 4
    assert str(error) == "4 configuration errors:\n" + "\n".join(
        f"  {problem}" for problem in error.problems
    )


def test_problems_of_a_result_store_come_with_those_of_a_file_failing_elsewhere(
    tmp_path: Path, registry: TaskBackendRegistry
) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(
            tmp_path,
            """
            tasks:
              backend: {type: memory}
              worker: {worker_count: 0}
              result_store: {type: memory, size: 3}
            """,
            registry,
        )
    assert [p.split(": ")[1] for p in info.value.problems] == [
        "tasks.worker.worker_count",
        "tasks.result_store.size",
    ]


def test_one_problem_is_the_message_itself(tmp_path: Path, registry: TaskBackendRegistry) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, "tasks:\n  backend: {type: memory, queue: x}\n", registry)
    assert info.value.problems == (str(info.value),)
    assert "\n" not in str(info.value)


def test_an_unknown_backend_type_among_other_problems_is_a_backend_not_found_error(
    tmp_path: Path, registry: TaskBackendRegistry
) -> None:
    with pytest.raises(BackendNotFoundError) as info:
        load(
            tmp_path,
            "tasks:\n  backend: {type: kafka}\n  result_store: {type: memory, size: 3}\n",
            registry,
        )
    assert len(info.value.problems) == 2


# -- connection URLs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        (
            "backend: {type: redis, redis_url: 'http://h:6379/0'}",
            "tasks.backend.redis_url",
            "'http://h:6379/0' is not a Redis URL: it must start with redis://, rediss://, "
            "unix://, redis+sentinel:// or rediss+sentinel://",
        ),
        (
            "backend: {type: rabbitmq, amqp_url: 'http://guest:pw@h/'}",
            "tasks.backend.amqp_url",
            "'http://guest:***@h/' is not a RabbitMQ URL: it must start with amqp:// or amqps://",
        ),
        (
            "backend: {type: postgres, postgres_dsn: 'redis://h/0'}",
            "tasks.backend.postgres_dsn",
            "is not a PostgreSQL URL: it must start with postgres:// or postgresql://",
        ),
        (
            "backend: {type: postgres, postgres_dsn: 'host=db dbname=app'}",
            "tasks.backend.postgres_dsn",
            "'host=db dbname=app' is not a PostgreSQL URL",
        ),
        (
            "backend: {type: redis, redis_url: '${EMPTY:-}'}",
            "tasks.backend.redis_url",
            "'' is not a Redis URL",
        ),
        (
            "backends: [{name: a, type: memory}, {name: b, type: rabbitmq, amqp_url: 'amqp:/h'}]",
            "tasks.backends[1].amqp_url",
            "'amqp:/h' is not a RabbitMQ URL",
        ),
    ],
)
def test_a_bad_url_scheme_is_reported_at_load_with_file_line_and_key(
    tmp_path: Path,
    registry: TaskBackendRegistry,
    section: str,
    key: str,
    value: str,
) -> None:
    message = error_of(tmp_path, f"tasks:\n  {section}\n", registry)
    assert message.startswith(f"lexigram.yaml:2: {key}: ")
    assert value in message
    assert "pw" not in message


def test_a_bad_result_store_url_is_reported_with_the_backend_url(
    tmp_path: Path, registry: TaskBackendRegistry
) -> None:
    pytest.importorskip("lexigram.tasks.redis")
    with pytest.raises(ConfigurationError) as info:
        load(
            tmp_path,
            """
            tasks:
              backend: {type: redis, redis_url: 'https://cache'}
              result_store: {type: redis, redis_url: 'cache:6379'}
            """,
            registry,
        )
    assert [p.split(": ", 2)[:2] for p in info.value.problems] == [
        ["lexigram.yaml:2", "tasks.backend.redis_url"],
        ["lexigram.yaml:3", "tasks.result_store.redis_url"],
    ]


@pytest.mark.parametrize(
    "section",
    [
        "backend: {type: redis, redis_url: 'rediss://:pw@h:6380/0'}",
        "backend: {type: redis, redis_url: 'unix:///run/redis.sock'}",
        "backend: {type: redis, redis_url: 'REDIS://h'}",
        "backend: {type: redis}",  # the constructor's default
        "backend: {type: rabbitmq, amqp_url: 'amqps://u:p@h/vhost'}",
        "backend: {type: postgres, postgres_dsn: 'postgres://u@h/db'}",
        "backend: {type: postgres, postgres_dsn: 'postgresql://u@h/db'}",
        "backend: {type: acme, url: 'http://anything'}",  # not a built-in type: not checked
    ],
)
def test_accepted_url_schemes(tmp_path: Path, section: str) -> None:
    reg = TaskBackendRegistry(load_entry_points=False)
    reg.register("redis", lambda redis_url="redis://localhost": UrlQueue(redis_url))
    reg.register("rabbitmq", amqp_like)
    reg.register("postgres", postgres_like)
    reg.register("acme", UrlQueue)
    load(tmp_path, f"tasks:\n  {section}\n", reg)


def test_a_configuration_error_of_a_constructor_names_the_section(tmp_path: Path) -> None:
    def strict_url(url: str) -> MemoryTaskQueue:
        raise ConfigurationError(f"unsupported scheme in {url}")

    reg = TaskBackendRegistry(load_entry_points=False)
    reg.register("strict", strict_url)
    config = load_config(
        write(tmp_path, "tasks:\n  backend: {type: strict, url: 'x://:pw@h'}\n"),
        env={},
        registry=reg,
    )
    with pytest.raises(ConfigurationError) as info:
        config.create_provider()
    assert str(info.value) == (
        "lexigram.yaml:2: tasks.backend: cannot create the backend of type 'strict': "
        "unsupported scheme in x://:***@h"
    )


# -- max_job_bytes ------------------------------------------------------------------------


def test_max_job_bytes_goes_to_every_backend(tmp_path: Path, registry: TaskBackendRegistry) -> None:
    config = load(
        tmp_path,
        """
        tasks:
          backends:
            - {name: a, type: memory}
            - {name: b, type: redis, redis_url: "${REDIS_URL}"}
          max_job_bytes: ${LIMIT}
        """,
        registry,
        LIMIT="65536",
    )
    provider = config.create_provider()
    assert provider.max_job_bytes == 65536
    assert [q.max_job_bytes for q in provider.backends.values()] == [65536, 65536]  # type: ignore[attr-defined]
    default = load(tmp_path, "tasks:\n  backend: {type: memory}\n", registry).create_provider()
    assert default.max_job_bytes is None
    assert default.queue.max_job_bytes == 10 * 1024 * 1024  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10MiB", "tasks.max_job_bytes: Input should be a valid integer"),
        ("0", "tasks.max_job_bytes: Input should be greater than 0"),
        ("1.5", "tasks.max_job_bytes: Input should be a valid integer"),
    ],
)
def test_max_job_bytes_is_a_positive_number_of_bytes(
    tmp_path: Path, registry: TaskBackendRegistry, value: str, expected: str
) -> None:
    message = error_of(
        tmp_path, f"tasks:\n  backend: {{type: memory}}\n  max_job_bytes: {value}\n", registry
    )
    assert message.startswith(f"lexigram.yaml:3: {expected}")
