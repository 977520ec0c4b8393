"""Prometheus metrics of one server instance, with their own registry and HTTP exporter.

Each ``ServiceMetrics`` owns a ``CollectorRegistry``, so several servers in one process
(tests start many) never collide on metric names. ``start_http(0)`` picks a free port.

    metrics = ServiceMetrics()
    port = metrics.start_http(0)               # curl http://127.0.0.1:{port}/metrics
    metrics.requests.labels("Score", "OK").inc()
    metrics.value("grm_requests_total", method="Score", code="OK")   # 1.0
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServiceMetrics:
    """The service's counters, histograms and gauges (names below are the exported ones)."""

    def __init__(self) -> None:
        self.registry = reg = CollectorRegistry()
        self.requests = Counter("grm_requests", "RPCs answered, by method and status code (refusals "
                                "included; a call its client gave up on is CANCELLED, or "
                                "DEADLINE_EXCEEDED when its deadline ended it)",
                                ["method", "code"], registry=reg)  # -> grm_requests_total
        self.caller_requests = Counter("grm_caller_requests", "RPCs answered with a bearer token, by the "
                                       "token's name and status code (names come from the token file, "
                                       "so their number is bounded)", ["caller", "code"], registry=reg)
        self.latency = Histogram("grm_request_latency_seconds", "RPC latency, by method", ["method"],
                                 buckets=LATENCY_BUCKETS, registry=reg)
        self.items = Counter("grm_items", "inputs scored, by source (computed: run by the engine, counted "
                             "when its pass ends even if its caller left | cache: answered from the cache)",
                             ["source"], registry=reg)
        self.generated_tokens = Counter(
            "grm_generated_tokens", "tokens the engine generated, by whether the input's callers still "
            "waited when its pass ended (waiting | gone: cancelled or past the deadline; such rows stop "
            "early)", ["callers"], registry=reg)
        self.samples = Counter("grm_samples", "judgments sampled by the engine (every one generated)",
                               registry=reg)
        self.invalid_samples = Counter("grm_invalid_samples", "invalid judgments, by reason",
                                       ["reason"], registry=reg)
        self.batch_size = Histogram("grm_batch_size", "inputs per engine pass",
                                    buckets=BATCH_BUCKETS, registry=reg)
        self.batch_sequences = Histogram("grm_batch_sequences", "sampled sequences per engine pass",
                                         buckets=BATCH_BUCKETS, registry=reg)
        self.queue_depth = Gauge("grm_queue_depth", "inputs waiting for the engine", registry=reg)
        self.dropped = Counter("grm_dropped", "inputs dropped before the engine ran them, by reason "
                               "(deadline | cancelled)", ["reason"], registry=reg)
        self.cache_lookups = Counter("grm_cache_lookups", "cache lookups, by result (hit | miss)",
                                     ["result"], registry=reg)
        self.leases = Counter("grm_replica_leases", "inputs missed by the shared cache, by who ran them "
                              "(computed: this replica held the lease | waited: another replica's result "
                              "was read | unleased: Redis did not answer, computed here)",
                              ["outcome"], registry=reg)
        self._http = None

    def start_http(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` (0 = a free port); return the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return server.server_port

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def value(self, name: str, **labels: str) -> float:
        """The current value of one exported sample (0.0 when it was never touched)."""
        return self.registry.get_sample_value(name, labels) or 0.0
