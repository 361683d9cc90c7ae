"""Django set up, the shop's tables and helpers for the ``checks_*.py`` modules.

``test_django_project.py`` loads this as a pytest plugin (``-p checks_plugin``)
in a ``python -m pytest`` process of its own: Django's settings are
process-wide, so it is set up as soon as this is imported, which the main
test session never does (no module here matches ``test_*.py``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import django
import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_project.settings")
django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from shop.tasks import provider  # noqa: E402

from lexigram.tasks import TaskProvider  # noqa: E402
from lexigram.tasks.integrations.django import shutdown  # noqa: E402

HERE = Path(__file__).resolve().parent
ON_POSTGRES = os.environ.get("SHOP_QUEUE", "postgres") == "postgres"


@pytest.fixture(scope="session", autouse=True)
def database() -> Iterator[None]:
    """The shop's tables in ``SHOP_SCHEMA`` (the outer test drops the schema)."""
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE SCHEMA IF NOT EXISTS "{settings.SHOP_SCHEMA}"')
    call_command("migrate", verbosity=0)
    if ON_POSTGRES:  # the job tables, as `lexigram-tasks postgres migrate` creates them
        asyncio.run(provider.queue.migrate())  # type: ignore[attr-defined]
    yield
    connection.close()


@pytest.fixture(autouse=True)
def fresh_loop() -> Iterator[None]:
    """Each check starts with the provider disconnected (a sync check connects it on
    the integration's background loop, an async one on its own loop)."""
    yield
    shutdown()


def pending() -> int:
    """Jobs waiting in the shop's queue, read by a provider of its own."""

    async def count() -> int:
        queue = TaskProvider.from_config(settings.LEXIGRAM_TASKS).queue
        async with queue:
            return (await queue.counts()).pending

    return asyncio.run(count())


def post(path: str, **data: str) -> tuple[int, dict[str, object]]:
    response = Client().post(path, data)
    return response.status_code, response.json()
