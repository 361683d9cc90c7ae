"""Checks with the shop's jobs on Redis."""

from __future__ import annotations

import pytest
from checks_plugin import post
from shop.models import Order


def test_in_transaction_needs_a_postgres_queue() -> None:
    with pytest.raises(TypeError, match="only on a PostgresTaskQueue"):
        post("/orders/", email="gus@example.com")
    assert not Order.objects.filter(email="gus@example.com").exists()
