"""The ``redis_server`` fixture: a fresh, empty ``redis-server`` for one test
(``services.testing.redis_servers.RedisServer``). Import it into a test module::

    from redis_fixtures import redis_server  # noqa: F401

    def test_something(redis_server):
        url = redis_server.url          # redis://127.0.0.1:PORT/0
"""

from __future__ import annotations

import pytest

from services.testing.redis_servers import RedisServer


@pytest.fixture
def redis_server():
    """A fresh, empty ``redis-server`` for one test."""
    with RedisServer() as server:
        yield server
