"""An asyncio Redis client from a URL: one server, or a Redis Cluster.

- ``redis://host:port/db`` (``rediss://`` for TLS, ``unix://`` ...): one server, as redis-py
  reads such URLs.
- ``redis+cluster://host:port,host:port,...`` (``rediss+cluster://`` for TLS): a Redis
  Cluster through redis-py's cluster client. The addresses are where it starts looking;
  it learns the rest of the cluster from them, follows MOVED/ASK redirections, and after a
  node fails rereads which master serves each slot (a promoted replica, after a failover).
  A user and password go before the first address: ``redis+cluster://user:pw@h1:7000,h2:7001``.

The score cache and the replica lease keep every key of one input in one hash slot: a
cache key holds its digest in a hash tag (``prefix{digest}``, services/cache.py), and the
judgments and lease keys append to it, so the reads and writes of one input reach one
node even in a cluster. A lookup of a batch spans slots: ``mget`` splits it per node there.

    client = redis_client("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", timeout_s=1.0)
    values = await mget(client, keys)
"""

from __future__ import annotations

from typing import Sequence
from urllib.parse import unquote

import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def redis_client(url: str, *, timeout_s: float) -> redis.asyncio.Redis | RedisCluster:
    """A client that connects lazily (nothing happens until its first command).

    A connection that fails is retried once, at once, on a fresh one: a pooled connection
    may be one a restarted server closed, and only its first use finds that out.
    """
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    if not is_cluster_url(url):
        return redis.asyncio.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                            retry=retry, health_check_interval=0)
    nodes, username, password, tls = parse_cluster_url(url)
    return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes], username=username,
                        password=password, ssl=tls, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                        retry=retry)


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], str | None, str | None, bool]:
    """``redis+cluster://[user:password@]host:port,host:port[/]`` -> (addresses, user, password, TLS)."""
    scheme, _, rest = url.partition("://")
    tls = CLUSTER_SCHEMES[scheme.lower()]
    rest, _, db = rest.partition("/")
    if db not in ("", "0"):
        raise ValueError(f"{url}: a Redis Cluster has database 0 only, got /{db}")
    credentials, _, hosts = rest.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    nodes = []
    for part in hosts.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{url}: every cluster address must be host:port, got {part.strip()!r}")
        nodes.append((host.strip("[]"), int(port)))
    return nodes, unquote(username) or None, unquote(password) or None, tls


async def mget(client: redis.asyncio.Redis | RedisCluster, keys: Sequence[str]) -> list[bytes | None]:
    """The values of ``keys`` in order (None where absent); per node in a cluster."""
    if isinstance(client, RedisCluster):
        return await client.mget_nonatomic(list(keys))
    return await client.mget(list(keys))
