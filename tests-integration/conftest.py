"""Real services for the integration tests (SPEC section 10).

Each service comes from an environment variable; when it is unset and a
Docker engine answers, testcontainers starts one for the session. With
neither, the test fails and says how to provide the service: a missing
server never turns into a silent skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
    except Exception:
        return False
    return True


def _service(var: str, what: str, start: Any) -> Iterator[str]:
    url = os.environ.get(var)
    if url:
        yield url
        return
    if not _docker_available():
        pytest.fail(
            f"{what} is needed: set {var} (e.g. {start.example}) or run a Docker engine "
            "so that testcontainers can start one",
            pytrace=False,
        )
    with start() as url:
        yield url


class _Container:
    example = ""

    def __init__(self) -> None:
        self._container: Any = None

    def __exit__(self, *exc: object) -> None:
        self._container.stop()


class _Redis(_Container):
    example = "redis://127.0.0.1:6379/0"

    def __enter__(self) -> str:
        from testcontainers.redis import RedisContainer

        self._container = RedisContainer("redis:7").start()
        host = self._container.get_container_host_ip()
        return f"redis://{host}:{self._container.get_exposed_port(6379)}/0"


class _RabbitMQ(_Container):
    example = "amqp://guest:guest@127.0.0.1:5672/"

    def __enter__(self) -> str:
        from testcontainers.rabbitmq import RabbitMqContainer

        self._container = RabbitMqContainer("rabbitmq:3.13").start()
        host = self._container.get_container_host_ip()
        return f"amqp://guest:guest@{host}:{self._container.get_exposed_port(5672)}/"


class _Postgres(_Container):
    example = "postgresql://postgres@127.0.0.1:5432/test"

    def __enter__(self) -> str:
        from testcontainers.postgres import PostgresContainer

        self._container = PostgresContainer("postgres:16").start()
        url: str = self._container.get_connection_url(driver=None)
        return url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    yield from _service("LEXIGRAM_TEST_REDIS_URL", "Redis", _Redis)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    yield from _service("LEXIGRAM_TEST_AMQP_URL", "RabbitMQ", _RabbitMQ)


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    yield from _service("LEXIGRAM_TEST_POSTGRES_DSN", "PostgreSQL", _Postgres)
