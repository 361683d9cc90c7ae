"""Checks of the transactional enqueue, with the shop's jobs on PostgreSQL."""

from __future__ import annotations

from checks_plugin import pending, post
from shop.models import Order


def test_a_declined_order_leaves_no_order_and_no_job() -> None:
    assert post("/orders/", email="ada@example.com", card="declined")[0] == 402
    assert not Order.objects.filter(email="ada@example.com").exists()
    assert pending() == 0


def test_the_job_is_written_in_the_orders_transaction() -> None:
    status, body = post("/orders/", email="bob@example.com")
    assert status == 201
    assert Order.objects.filter(pk=body["order"]).exists()
    assert pending() == 1
