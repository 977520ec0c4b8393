"""The reward service as a Ray Serve application: every Serve replica hosts our gRPC server.

Ray places, restarts and scales the replicas; each replica runs the same server as
``grm serve`` (services/server.py): the engine (in the replica, or remote URLs), the
scheduler, the cache, health, metrics. Callers reach a replica two ways:

- over gRPC, at the address the replica bound (``ReplicaSettings.host``/``port``); with a
  fixed port and ``max_replicas_per_node=1`` every node that runs a replica serves at
  ``node:port``, and clients list those addresses (``host:port,host:port``: round robin
  with health checks, services/targets.py);
- through the Serve handle, from any task or actor of the same Ray cluster (a trainer):
  ``RewardReplica.call`` runs the servicer's own handler for the method on the replica's
  event loop, with the same limits, admission, metrics and status codes as a gRPC call,
  but no port in between (services/serve_client.py is its client).

Why not Serve's gRPC ingress: the proxy would sit between the client and our handlers,
and our wire behaviour depends on owning the server: requests whose bytes do not parse
are answered INVALID_ARGUMENT by our own deserializer, refusals carry a retry hint in the
trailing metadata, every reply names its replica, TLS and bearer tokens are checked by
us, and the health service flips to NOT_SERVING before a drain. Hosting the server keeps
all of that byte for byte, and the handle path covers callers inside the cluster.

Health: Serve calls ``check_health`` every ``health_check_period_s``; it fails once the
server is stopping or its model failed to load, and Serve then replaces the replica.
A replica starts taking calls only once its model is loaded (the constructor waits).

Drain: when Serve removes a replica (scale-down, a new deploy, the application deleted)
it first lets the handle calls in flight finish, then runs ``__del__``, which stops the
server the way SIGTERM stops ``grm serve``: health NOT_SERVING (clients' round robin
leaves it), new calls UNAVAILABLE (clients retry elsewhere), the calls in flight drained
for up to ``ServerConfig.grace_s``. Serve's own deadline for all this is set above it.

    settings = ServeSettings(ReplicaSettings(redis_url="redis://10.0.0.5:6379/0"), num_replicas=2)
    handle = serve.run(reward_app(loader, config, settings), name="grm", route_prefix=None)
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
import ray
from ray import serve

from grm.judge import GenerativeRewardModel
from services.cache import MemoryCache, RedisCache
from services.convert import SERVICE_NAME
from services.server import BackgroundServer, ServerConfig, loopback

HANDLE_PEER = "ray:serve-handle"  # the peer a handle call is admitted and recorded as


@dataclass(frozen=True)
class ReplicaSettings:
    """What every replica runs with."""

    host: str = "127.0.0.1"  # where each replica's gRPC server binds
    port: int = 0  # 0: a free port per replica
    redis_url: str | None = None  # shared cache and leases (redis:// or redis+cluster://); None: in memory
    cache_ttl_s: int = 86_400
    torch_threads: int = 0  # torch CPU threads per replica; 0 leaves torch's default

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"ReplicaSettings.port must be in 0..65535, got {self.port}")
        if self.torch_threads < 0:
            raise ValueError(f"ReplicaSettings.torch_threads must be >= 0, got {self.torch_threads}")


@dataclass(frozen=True)
class ServeSettings:
    """How Serve runs the replicas; the server inside each is set by ``ReplicaSettings`` and
    ``ServerConfig``. ``serve.run`` of a changed application replaces every replica (Serve
    gives each imperative deploy a new version); autoscaling adds and removes replicas
    without touching the others."""

    replica: ReplicaSettings = ReplicaSettings()
    num_replicas: int = 1
    autoscaling: dict[str, Any] | None = None  # Serve's autoscaling_config; replaces num_replicas
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    max_replicas_per_node: int | None = None  # 1 with a fixed port: one server per node address
    max_ongoing_requests: int = 256  # handle calls per replica at once (gRPC calls are the server's)
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    env: dict[str, str] = field(default_factory=dict)  # environment variables of the replica processes

    def __post_init__(self) -> None:
        if self.autoscaling is None and self.num_replicas < 1:
            raise ValueError(f"ServeSettings.num_replicas must be >= 1, got {self.num_replicas}")
        if self.replica_cpus < 0 or self.replica_gpus < 0:
            raise ValueError(f"ServeSettings needs replica_cpus and replica_gpus >= 0, got "
                             f"{self.replica_cpus}, {self.replica_gpus}")


def reward_app(loader: Callable[[], GenerativeRewardModel], config: ServerConfig,
               settings: ServeSettings = ServeSettings()) -> serve.Application:
    """The Serve application; ``serve.run(app, name=..., route_prefix=None)`` deploys it."""
    actor: dict[str, Any] = {"num_cpus": settings.replica_cpus, "num_gpus": settings.replica_gpus}
    if settings.env:
        actor["runtime_env"] = {"env_vars": dict(settings.env)}
    options = dict(ray_actor_options=actor, max_ongoing_requests=settings.max_ongoing_requests,
                   health_check_period_s=settings.health_check_period_s,
                   health_check_timeout_s=settings.health_check_timeout_s,
                   graceful_shutdown_wait_loop_s=0.5,
                   graceful_shutdown_timeout_s=config.grace_s + 10.0)  # the drain, then closing up
    if settings.autoscaling is not None:
        options["autoscaling_config"] = dict(settings.autoscaling)
    else:
        options["num_replicas"] = settings.num_replicas
    if settings.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = settings.max_replicas_per_node
    deployment = serve.deployment(RewardReplica, name="RewardReplica").options(**options)
    return deployment.bind(loader, config, settings.replica)


class RewardReplica:
    """One Serve replica: a RewardServer on its own event loop thread, plus the handle methods."""

    def __init__(self, loader: Callable[[], GenerativeRewardModel], config: ServerConfig, settings: ReplicaSettings):
        if settings.torch_threads:
            import torch
            torch.set_num_threads(settings.torch_threads)
        cache = (functools.partial(RedisCache, settings.redis_url, ttl_s=settings.cache_ttl_s)
                 if settings.redis_url else MemoryCache)
        self.server = BackgroundServer(loader, f"{settings.host}:{settings.port}", config, cache_factory=cache)
        self.server.start()  # returns once the model is loaded: Serve routes nothing here before
        self.grace_s = config.grace_s
        wildcard = loopback(settings.host) != settings.host  # bound on every interface
        host = ray.util.get_node_ip_address() if wildcard else settings.host  # the address clients use
        self.address = f"{host}:{self.server.port}"
        self._rpcs = self.server.server.servicer.handler()
        self._stopped = False

    async def call(self, method: str, request: bytes, timeout_s: float | None = None,
                   metadata: tuple = ()) -> tuple[int, str, bytes, tuple]:
        """One RewardService call (``Score``, ``ScoreBatch``, ``GetInfo``) from serialized
        request bytes: (status code number, details, serialized reply, trailing metadata)."""
        work = call_servicer(self._rpcs, method, request, timeout_s, metadata)
        return await asyncio.wrap_future(self.server.submit(work))

    def info(self) -> dict[str, Any]:
        """Where this replica serves and what Ray calls it."""
        context = ray.get_runtime_context()
        return {"address": self.address, "metrics_port": self.server.server.metrics_port,
                "replica": self.server.server.servicer.replica_id, "actor": context.get_actor_name(),
                "pid": os.getpid()}

    def check_health(self) -> None:
        """Serve's health probe: raise when this replica can no longer serve."""
        servicer = self.server.server.servicer
        if self._stopped or servicer.shutting_down:
            raise RuntimeError("the reward server is shutting down")
        if servicer.backend is None:
            raise RuntimeError(f"the model is not loaded: {servicer.load_error or 'still loading'}")

    def __del__(self) -> None:
        """Serve removes this replica: drain the gRPC calls in flight, then stop."""
        if getattr(self, "_stopped", True):  # never started, or drained already
            return
        self._stopped = True
        self.server.stop(self.grace_s)


def live_replicas(handle: serve.handle.DeploymentHandle, want: int, timeout_s: float = 300.0) -> dict[str, dict]:
    """Actor name -> ``RewardReplica.info()`` of ``want`` live replicas. Serve's router picks
    the replica of each call, so this asks until ``want`` different ones have answered."""
    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    while len(found) < want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(found)} of {want} replicas answered within {timeout_s:g} s")
        try:
            info = handle.info.remote().result(timeout_s=max(1.0, deadline - time.monotonic()))
            found[info["actor"]] = info
        except ray.exceptions.RayActorError:  # a replica that died, not yet out of the router
            time.sleep(0.2)
    return found


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple):
        super().__init__(details)
        self.code, self.details, self.trailing = code, details, trailing


class _HandleContext:
    """What the servicer reads from a ``grpc.aio.ServicerContext``, for a call that came
    through a Serve handle: its deadline, metadata, peer, and how it ends."""

    def __init__(self, timeout_s: float | None, metadata: tuple):
        self._end = None if timeout_s is None else time.monotonic() + timeout_s
        self._metadata = tuple(metadata or ())
        self.trailing: tuple = ()

    def time_remaining(self) -> float | None:
        return None if self._end is None else max(0.0, self._end - time.monotonic())

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def peer(self) -> str:
        return HANDLE_PEER

    def set_trailing_metadata(self, metadata) -> None:
        self.trailing = tuple(metadata)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        raise _Aborted(code, details, tuple(trailing_metadata or ()))


@dataclass(frozen=True)
class _CallDetails:
    method: str
    invocation_metadata: tuple = ()


async def call_servicer(rpcs: grpc.GenericRpcHandler, method: str, request: bytes, timeout_s: float | None,
                        metadata: tuple) -> tuple[int, str, bytes, tuple]:
    """Run the servicer's handler for ``method`` on ``request`` bytes, on the server's loop."""
    rpc = rpcs.service(_CallDetails(f"/{SERVICE_NAME}/{method}"))
    if rpc is None:
        return _status(grpc.StatusCode.UNIMPLEMENTED, f"{SERVICE_NAME} has no method {method!r}")
    context = _HandleContext(timeout_s, metadata)
    try:
        reply = await asyncio.wait_for(rpc.unary_unary(rpc.request_deserializer(request), context), timeout_s)
    except _Aborted as e:
        return e.code.value[0], e.details, b"", e.trailing
    except asyncio.TimeoutError:
        return _status(grpc.StatusCode.DEADLINE_EXCEEDED, f"the call's deadline ({timeout_s:g} s) passed")
    return grpc.StatusCode.OK.value[0], "", rpc.response_serializer(reply), context.trailing


def _status(code: grpc.StatusCode, details: str) -> tuple[int, str, bytes, tuple]:
    return code.value[0], details, b"", ()

