"""The ``redis_cluster`` fixture: a fresh 3-master, 3-replica Redis Cluster for one test
(``services.testing.redis_servers.RedisClusterServers``). Import it into a test module::

    from redis_cluster_fixtures import redis_cluster  # noqa: F401

    def test_something(redis_cluster):
        port = redis_cluster.kill_master_of(key)      # SIGKILL the master holding key's slot
"""

from __future__ import annotations

import pytest

from services.testing.redis_servers import RedisClusterServers


@pytest.fixture
def redis_cluster():
    """A fresh 3-master, 3-replica cluster for one test."""
    with RedisClusterServers() as cluster:
        yield cluster
