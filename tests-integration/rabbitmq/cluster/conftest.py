"""The three-node cluster of the failover tests: started once for the module, then stopped.

These tests start three RabbitMQ nodes of their own (about 25 s on two
cores), so the default suite does not collect them: they run when
``LEXIGRAM_TEST_RABBITMQ_CLUSTER=1`` is set, which
``scripts/rabbitmq_cluster_test.sh`` does. They need the ``rabbitmq-server``
package's scripts in ``/usr/lib/rabbitmq/bin`` (or ``RABBITMQ_SBIN``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _local_cluster import SBIN, LocalCluster

if not os.environ.get("LEXIGRAM_TEST_RABBITMQ_CLUSTER"):
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    if not (SBIN / "rabbitmq-server").exists():
        pytest.fail(
            f"no {SBIN / 'rabbitmq-server'}: install the rabbitmq-server package "
            "(apt-get install rabbitmq-server) or point RABBITMQ_SBIN at its sbin folder",
            pytrace=False,
        )
    started = LocalCluster()
    try:
        asyncio.run(started.start())
        print(f"\nthree-node RabbitMQ cluster started in {started.started_in:.1f}s")
        yield started
    finally:
        started.close()
