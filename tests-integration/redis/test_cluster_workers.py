"""The worker contract suite on a Redis Cluster, with one shard and with four.

The module starts its own cluster of three masters and three replicas on
loopback ports 7212-7217 and stops it by PID at the end. ``test_cluster.py``
runs the queue contract suite on a cluster of its own, so the two files run
side by side.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lexigram.tasks.testing import WorkerContract

sys.path.insert(0, str(Path(__file__).parent))

from _cluster_nodes import ClusterHooks, ClusterNodes

FIRST_PORT = 7212


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNodes]:
    nodes = ClusterNodes(tmp_path_factory.mktemp("redis-cluster-workers"), FIRST_PORT)
    try:
        yield nodes.start()
    finally:
        nodes.stop()


class TestClusterWorkerContract(ClusterHooks, WorkerContract):
    pass


class TestShardedWorkerContract(ClusterHooks, WorkerContract):
    shards = 4
    keeps_order = False
