"""Checks of the shop on any backend (see ``checks_plugin.py``); they run after
the backend's own module, and the last one starts a worker process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

from checks_plugin import HERE, ON_POSTGRES, pending, post
from django.test import AsyncClient
from shop.models import Order
from shop.tasks import provider


def test_on_commit_a_declined_order_sends_nothing() -> None:
    before = pending()
    assert post("/orders/on-commit/", email="cy@example.com", card="declined")[0] == 402
    assert not Order.objects.filter(email="cy@example.com").exists()
    assert pending() == before


def test_on_commit_the_job_is_sent_after_the_commit() -> None:
    before = pending()
    status, body = post("/orders/on-commit/", email="dee@example.com")
    assert status == 201
    assert Order.objects.filter(pk=body["order"]).exists()
    assert pending() == before + 1


async def test_an_async_view_sends_on_the_servers_loop() -> None:
    before = await asyncio.to_thread(pending)
    client = AsyncClient()
    accepted = await client.post("/orders/async/", {"email": "eve@example.com"})
    assert accepted.status_code == 201
    refused = await client.post("/orders/async/", {"email": "fay@example.com", "card": "declined"})
    assert refused.status_code == 402
    assert await asyncio.to_thread(pending) == before + 1
    await provider.disconnect()


def test_a_worker_process_sends_every_committed_receipt() -> None:
    """Last: the orders committed above get their receipt from a separate worker."""
    waiting = list(Order.objects.filter(receipt_sent=False).values_list("pk", flat=True))
    assert len(waiting) == (3 if ON_POSTGRES else 2)
    worker = subprocess.Popen(
        [sys.executable, "-m", "lexigram.tasks.cli", "worker", "shop_project.worker:provider"],
        cwd=HERE,
    )
    try:
        deadline = time.monotonic() + 30
        while Order.objects.filter(pk__in=waiting, receipt_sent=False).exists():
            assert worker.poll() is None, f"the worker exited with status {worker.returncode}"
            assert time.monotonic() < deadline, "receipts not sent within 30 s"
            time.sleep(0.1)
        assert pending() == 0
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
