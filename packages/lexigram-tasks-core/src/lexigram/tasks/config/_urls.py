"""Connection URLs of the built-in components, checked when a file is loaded.

A wrong scheme (``http://`` for RabbitMQ, ``redis://`` for PostgreSQL) would
otherwise surface only at connect time, looking like an unreachable server.
Keyed by component kind and ``type``, so a package that registers its own
type under one of these names gets the same check.
"""

from __future__ import annotations

from typing import Any

from lexigram.tasks.redact import redact_url

_REDIS = ("Redis", ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"))
_POSTGRES = ("PostgreSQL", ("postgres", "postgresql"))

#: ``(component label, type) -> {key: (system, accepted schemes)}``.
URL_KEYS: dict[tuple[str, str], dict[str, tuple[str, tuple[str, ...]]]] = {
    ("backend", "redis"): {"redis_url": _REDIS},
    ("backend", "rabbitmq"): {"amqp_url": ("RabbitMQ", ("amqp", "amqps"))},
    ("backend", "postgres"): {"postgres_dsn": _POSTGRES},
    ("result store", "redis"): {"redis_url": _REDIS},
    ("result store", "postgres"): {"postgres_dsn": _POSTGRES},
    ("rate limiter", "redis"): {"redis_url": _REDIS},
}


def url_problems(label: str, type_name: str, options: dict[str, Any]) -> list[tuple[str, str]]:
    """``(key, message)`` for each URL option of this component with a wrong scheme."""
    problems = []
    for key, (system, schemes) in URL_KEYS.get((label, type_name), {}).items():
        value = options.get(key)
        if not isinstance(value, str):
            continue  # absent (the default applies) or a type error reported elsewhere
        scheme, separator, _ = value.partition("://")
        if separator and scheme.lower() in schemes:
            continue
        accepted = ", ".join(f"{s}://" for s in schemes[:-1]) + f" or {schemes[-1]}://"
        problems.append(
            (key, f"{redact_url(value)!r} is not a {system} URL: it must start with {accepted}")
        )
    return problems
