"""The gRPC server: RewardService, health, reflection, metrics, background loading, shutdown.

``create_server`` binds (port 0 picks a free port, as in the grpc examples), starts
serving at once with health NOT_SERVING, and loads the model on a background thread;
until the model is loaded every RewardService call answers UNAVAILABLE. ``stop`` turns
health NOT_SERVING, refuses new calls with UNAVAILABLE, drains the calls in flight for
up to ``grace_s``, then stops the scheduler, the cache and the metrics exporter.

    server, port = await create_server(lambda: GenerativeRewardModel.load(path))
    await server.wait_ready()
    ...
    await server.stop()

``BackgroundServer`` runs the same on its own event loop in a thread (tests, ``grm demo``,
the benchmark); ``run_until_signal`` is the body of ``grm serve`` (SIGTERM drains, exit 0).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from grm.judge import GenerativeRewardModel
from grm.types import SamplingOptions
from services.admission import Admission, AdmissionConfig
from services.cache import DEFAULT_PREFIX, RedisCache
from services.convert import SERVICE_NAME
from services.http_gate import HTTPLimits
from services.http_reward import RewardHTTPServer
from services.inspector import Inspector, RecentRequests
from services.lease import ReplicaLease
from services.metrics import ServiceMetrics
from services.scheduler import Scheduler, SchedulerConfig
from services.security import TLSFiles, TokenFile, TokenGate
from services.servicer import Backend, RewardServicer
from services.validation import Limits

log = logging.getLogger(__name__)
SERVER_VERSION = "0.1.0"
JudgeOrLoader = GenerativeRewardModel | Callable[[], GenerativeRewardModel]


@dataclass(frozen=True)
class ServerConfig:
    limits: Limits = Limits()
    defaults: SamplingOptions = SamplingOptions()  # used for unset sampling fields
    scheduler: SchedulerConfig = SchedulerConfig()
    max_concurrent_rpcs: int = 256  # RewardService calls at once; past this RESOURCE_EXHAUSTED (counted)
    grace_s: float = 30.0  # how long shutdown waits for calls in flight
    metrics_port: int | None = None  # Prometheus /metrics port; 0 = a free one, None = off
    metrics_host: str = "127.0.0.1"
    http_port: int | None = None  # OpenRLHF-style HTTP reward endpoint (services/http_reward.py); 0 = a free port
    cache_prefix: str = DEFAULT_PREFIX  # change it to drop every old cache entry
    record: int = 0  # scored inputs kept for the inspector's recent-requests pages; 0 = off (privacy)
    tls: TLSFiles | None = None  # TLS (and with a client CA, mutual TLS) on the gRPC and HTTP ports
    token_file: str | None = None  # bearer tokens by name (services/security.py); None = no tokens
    admins: tuple[str, ...] = ()  # token names that see every caller's recorded inputs in the inspector
    allowed_hosts: tuple[str, ...] = ()  # names of this server a browser may use, besides the bound one
    admission: AdmissionConfig = AdmissionConfig()  # per-caller limits (services/admission.py)

    def __post_init__(self) -> None:
        self.limits.check_defaults(self.defaults)
        if self.max_concurrent_rpcs < 1:
            raise ValueError(f"ServerConfig.max_concurrent_rpcs must be >= 1, got {self.max_concurrent_rpcs}")
        if self.grace_s < 0:
            raise ValueError(f"ServerConfig.grace_s must be >= 0, got {self.grace_s}")
        if self.limits.max_batch_items > self.scheduler.max_queue:
            raise ValueError(f"Limits.max_batch_items ({self.limits.max_batch_items}) must not exceed "
                             f"SchedulerConfig.max_queue ({self.scheduler.max_queue}): such a batch never fits")
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
            raise ValueError(f"ServerConfig.metrics_port must be in 0..65535 or None, got {self.metrics_port}")
        if self.http_port is not None and not 0 <= self.http_port < 65536:
            raise ValueError(f"ServerConfig.http_port must be in 0..65535 or None, got {self.http_port}")
        if self.record < 0:
            raise ValueError(f"ServerConfig.record must be >= 0 (0 = off), got {self.record}")
        if self.token_file is not None:  # a bad file fails here, with its line, not at the first call
            try:
                TokenFile(self.token_file)
            except OSError as e:
                raise ValueError(f"ServerConfig.token_file: cannot read {self.token_file!r}: {e.strerror}") from None
        if self.admins and self.token_file is None:
            raise ValueError("ServerConfig.admins name tokens: give a token_file too")


class RewardServer:
    """A started grpc.aio server plus everything it owns. Made by ``create_server``."""

    def __init__(self, server: grpc.aio.Server, servicer: RewardServicer, health_servicer, config: ServerConfig,
                 metrics: ServiceMetrics, port: int, metrics_port: int | None, cache=None):
        self.server, self.servicer, self.health = server, servicer, health_servicer
        self.config, self.metrics, self.cache = config, metrics, cache
        self.port, self.metrics_port = port, metrics_port
        self.http: RewardHTTPServer | None = None  # the OpenRLHF endpoint, when config.http_port is set
        self.private_dir: str | None = None  # see create_server: the HTTP front end's unix socket
        self._ready = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping = False

    @property
    def judge(self) -> GenerativeRewardModel | None:
        return self.servicer.backend.judge if self.servicer.backend else None

    def _begin_loading(self, judge_or_loader: JudgeOrLoader) -> None:
        if isinstance(judge_or_loader, GenerativeRewardModel):
            asyncio.get_running_loop().create_task(self._loaded(judge_or_loader, None))
            return
        loop = asyncio.get_running_loop()

        def load() -> None:  # a daemon thread: shutting down never waits for a slow load
            try:
                judge, error = judge_or_loader(), None
            except Exception as e:
                log.exception("loading the model failed")
                judge, error = None, e
            try:
                asyncio.run_coroutine_threadsafe(self._loaded(judge, error), loop)
            except RuntimeError:  # the loop is gone: the server already stopped
                pass

        threading.Thread(target=load, name="grm-loader", daemon=True).start()

    async def _loaded(self, judge: GenerativeRewardModel | None, error: Exception | None) -> None:
        if error is not None:
            self.servicer.load_error = f"{type(error).__name__}: {error}"
        elif not self._stopping:
            scheduler = Scheduler(judge.run_plans, self.config.scheduler, self.metrics).start()
            self.servicer.backend = Backend(judge, scheduler)
            for name in ("", SERVICE_NAME):
                await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._ready.set()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the model is loaded; raise RuntimeError when loading failed."""
        await asyncio.wait_for(self._ready.wait(), timeout)
        if self.servicer.load_error:
            raise RuntimeError(f"the model failed to load: {self.servicer.load_error}")

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, drain the ones in flight (up to ``grace`` s), release everything."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self.servicer.shutting_down = True  # calls that slip in meanwhile get UNAVAILABLE
        await self.health.enter_graceful_shutdown()
        grace = self.config.grace_s if grace is None else grace
        drained_by = time.monotonic() + grace  # one grace for everything below
        if self.http is not None:  # stop taking HTTP requests; the ones in flight drain through gRPC below
            await asyncio.to_thread(self.http.stop)
        # Drain while the port still takes calls: the servicer refuses them with UNAVAILABLE,
        # which clients retry on another replica. A call that reaches a gRPC server already
        # stopping is cancelled by gRPC itself instead, which no client retries.
        while self.servicer.calls_in_flight and time.monotonic() < drained_by:
            await asyncio.sleep(0.02)
        await self.server.stop(max(0.0, drained_by - time.monotonic()))
        if self.servicer.backend is not None:
            await asyncio.to_thread(self.servicer.backend.scheduler.close, 30.0)
        self.servicer.close()
        if self.cache is not None:
            await self.cache.close()
        if self.servicer.lease is not None:
            await self.servicer.lease.close()
        await asyncio.to_thread(self.metrics.stop_http)
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
        self._stopped.set()


async def create_server(judge_or_loader: JudgeOrLoader, address: str = "127.0.0.1:0",
                        config: ServerConfig = ServerConfig(), cache=None) -> tuple[RewardServer, int]:
    """Bind ``address``, start serving (health NOT_SERVING), load the model in the background."""
    metrics = ServiceMetrics()
    servicer = RewardServicer(config.limits, config.defaults, metrics, cache, config.cache_prefix, SERVER_VERSION,
                              config.max_concurrent_rpcs)
    servicer.tokens = TokenFile(config.token_file) if config.token_file else None
    servicer.recorder = RecentRequests(config.record, tokens=servicer.tokens) if config.record else None
    servicer.admission = Admission(config.admission)
    if isinstance(cache, RedisCache):  # replicas sharing this Redis run identical work once
        servicer.lease = ReplicaLease(cache.url, owner=servicer.replica_id, metrics=metrics, result_ttl_s=cache.ttl_s)
    health_servicer = health.aio.HealthServicer()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    # No maximum_concurrent_rpcs here: grpc would refuse past it before any handler of ours
    # runs, so the refusals would go uncounted; the servicer enforces the limit instead.
    # With tokens, a call without one is refused on its metadata, before its message is read.
    gate = () if servicer.tokens is None else (
        TokenGate(servicer.tokens, SERVICE_NAME, lambda method: _count_unauthenticated(metrics, method)),)
    server = grpc.aio.server(
        interceptors=gate,
        options=[("grpc.max_receive_message_length", config.limits.max_message_bytes),
                 ("grpc.max_send_message_length", -1),  # replies with judgments can be large
                 ("grpc.so_reuseport", 0)])  # a port in use must fail loudly, not be shared
    server.add_generic_rpc_handlers((servicer.handler(),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        port = (server.add_secure_port(address, config.tls.grpc_credentials()) if config.tls
                else server.add_insecure_port(address))
    except RuntimeError as e:  # grpc's way of saying the address is taken or invalid
        raise OSError(f"could not bind {address}: {e}") from None
    if port == 0:
        raise OSError(f"could not bind {address}")
    private = None
    if config.tls is not None and config.http_port is not None:
        # The HTTP front end reaches the service over a unix socket in a folder only this
        # user can open: no certificate to present, and tokens are still checked on it.
        private = tempfile.mkdtemp(prefix="grm-")
        server.add_insecure_port(f"unix:{private}/grpc.sock")
    await server.start()
    metrics_port = None
    if config.metrics_port is not None:
        metrics_port = metrics.start_http(config.metrics_port, config.metrics_host)
    srv = RewardServer(server, servicer, health_servicer, config, metrics, port, metrics_port, cache)
    srv.private_dir = private  # the HTTP front end's unix socket folder, removed at stop
    if config.http_port is not None:
        host = address.rsplit(":", 1)[0]
        target = f"unix:{private}/grpc.sock" if private else f"{loopback(host)}:{port}"
        inspector = Inspector(servicer.recorder, tokens=servicer.tokens, admins=config.admins)
        srv.http = RewardHTTPServer(target, host, config.http_port, inspector=inspector,
                                    ssl_context=config.tls.ssl_context() if config.tls else None,
                                    tokens=servicer.tokens, allowed_hosts=config.allowed_hosts,
                                    limits=HTTPLimits(grace_s=max(config.grace_s, 0.1))).start()  # one grace for both ports
    srv._begin_loading(judge_or_loader)
    return srv, port


def _count_unauthenticated(metrics: ServiceMetrics, method: str) -> None:
    """Count a call the token gate refused, as the servicer counts the calls it answers."""
    method = method if method in ("Score", "ScoreBatch", "GetInfo") else "(unknown method)"  # labels stay bounded
    metrics.requests.labels(method, "UNAUTHENTICATED").inc()
    metrics.caller_requests.labels("(no valid token)", "UNAUTHENTICATED").inc()
    log.info("%s by (no valid token): UNAUTHENTICATED", method)


def _reload(tokens: TokenFile | None, say: Callable[[str], None]) -> None:
    """SIGHUP: reread the token file; a file that does not parse keeps the tokens in use.
    Without a token file there is nothing to reread, and the server goes on serving."""
    if tokens is None:
        say("SIGHUP: nothing to reload (no --token-file); serving on")
        return
    try:
        say(f"reloaded {tokens.reload()} tokens from {tokens.path}")
    except (OSError, ValueError) as e:
        say(f"token file not reloaded, the old tokens stay: {e}")


def grpc_address(host: str, port: int) -> str:
    """``host:port`` as gRPC reads it: an IPv6 address in brackets (``[::1]:50051``)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def loopback(host: str) -> str:
    """The address this process reaches a server bound on ``host`` at (a wildcard means loopback)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "[::]", "::") else host


async def run_until_signal(judge_or_loader: JudgeOrLoader, address: str, config: ServerConfig,
                           cache_factory: Callable[[], object] | None = None,
                           say: Callable[[str], None] = print) -> int:
    """The body of ``grm serve``: serve until SIGTERM/SIGINT, drain, return the exit code."""
    cache = cache_factory() if cache_factory else None
    srv, port = await create_server(judge_or_loader, address, config, cache)
    host = address.rsplit(":", 1)[0]
    say(f"serving on {host}:{port} (loading the model; health is NOT_SERVING until it is ready)")
    if srv.metrics_port is not None:
        say(f"metrics on http://{config.metrics_host}:{srv.metrics_port}/metrics")
    if srv.http is not None:
        say(f"OpenRLHF reward endpoint on http://{host}:{srv.http.port}/get_reward")
        say(f"inspector on http://{host}:{srv.http.port}/inspect")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, srv.servicer.tokens, say)
    ready = asyncio.create_task(srv.wait_ready())
    await asyncio.wait([ready, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if ready.done() and ready.exception() is not None:
        say(f"error: {ready.exception()}")
        code = 1
    elif ready.done():
        judge = srv.judge
        say(f"ready: model {judge.model_id} (revision {judge.revision[:12]}), template "
            f"{judge.template.version}, cache {getattr(cache, 'name', 'none')}")
        await stop.wait()
    say(f"shutting down: draining calls in flight (up to {config.grace_s:g} s)")
    await srv.stop()
    say("stopped")
    return code


class BackgroundServer:
    """A RewardServer on its own event loop in a daemon thread, driven from sync code.

        with BackgroundServer(judge) as bg:       # binds 127.0.0.1:0, waits for the model
            client = RewardClient(bg.address)
    """

    def __init__(self, judge_or_loader: JudgeOrLoader, address: str = "127.0.0.1:0",
                 config: ServerConfig = ServerConfig(), cache_factory: Callable[[], object] | None = None):
        self._args = (judge_or_loader, address, config)
        self._cache_factory = cache_factory  # called on the server's loop (async clients bind to it)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grm-server-loop", daemon=True)
        self.server: RewardServer | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self._args[1].rsplit(':', 1)[0]}:{self.port}"

    @property
    def metrics(self) -> ServiceMetrics:
        return self.server.metrics

    def run(self, coro, timeout: float | None = None):
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def submit(self, coro) -> concurrent.futures.Future:
        """Schedule a coroutine on the server's loop; await it elsewhere with ``asyncio.wrap_future``."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def start(self, wait_ready: bool = True, timeout: float = 300.0) -> "BackgroundServer":
        self._thread.start()

        async def boot() -> tuple[RewardServer, int]:
            cache = self._cache_factory() if self._cache_factory else None
            return await create_server(*self._args, cache=cache)

        self.server, self.port = self.run(boot(), timeout)
        if wait_ready:
            self.run(self.server.wait_ready(), timeout)
        return self

    def stop(self, grace: float | None = 5.0) -> None:
        if self.server is not None:
            self.run(self.server.stop(grace))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
