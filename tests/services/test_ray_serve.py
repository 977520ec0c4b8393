"""The reward service as a Ray Serve application (services/ray_serve.py) and its handle
client (services/serve_client.py), on a real local Ray (2 CPUs, loopback) with a real Redis.

One Ray instance and one application (2 replicas of the tiny model, a quarter CPU each,
one torch thread each) serve the whole module; starting Ray and Serve takes ~20 s on two
cores, so every test here shares them. The replicas write their Prometheus counters to
files (``PROMETHEUS_MULTIPROC_DIR``), so the engine runs of a replica killed with
``ray.kill`` can still be counted after its death.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import ray
from prometheus_client.multiprocess import MultiProcessCollector
from ray import serve

from grm.judge import GenerativeRewardModel
from grm_cli.main import build_parser
from grm_cli.serve_ray import serve_settings
from policy.adapters import trl_reward
from policy.adapters.verl_reward import verl_compute_score_batch
from service_helpers import CONFIG, FAST, QUERY, RESPONSES
from services.client import RetryPolicy, RewardClient, score_request
from services.proto.grm.v1 import reward_pb2 as pb
from services.ray_serve import ReplicaSettings, RewardReplica, ServeSettings, live_replicas, reward_app
from services.serve_client import ServeRewardClient, ServeRpcError, reward_client
from services.testing.redis_servers import RedisServer

APP = "grm-test"
# Room for a call that takes seconds (the drain test): 256 new tokens.
SERVE_CONFIG = dataclasses.replace(CONFIG, limits=dataclasses.replace(CONFIG.limits, max_new_tokens=256))


class RayApp:
    def __init__(self, handle, counters_dir: Path):
        self.handle, self.counters_dir = handle, counters_dir

    def replicas(self, want: int = 2) -> dict[str, dict]:
        return live_replicas(self.handle, want, timeout_s=120)

    def engine_runs(self, pid: int | None = None) -> float:
        """grm_items_total{source="computed"} of one replica process, or summed over every
        replica process, dead ones included."""
        files = [str(f) for f in self.counters_dir.glob(f"counter_{pid if pid else '*'}.db")]
        return sum(s.value for m in MultiProcessCollector.merge(files, accumulate=True) for s in m.samples
                   if s.name == "grm_items_total" and s.labels == {"source": "computed"})

    def kill_between_passes(self, victim: dict) -> None:
        """``ray.kill`` the victim halfway between the ends of two of its engine passes.

        A pass counts its inputs when it ends and stores their results just after; a replica
        killed in between has run inputs whose results are lost, which the others then run
        again. Killing mid-pass loses only work that was never counted."""
        ends = []
        for _ in range(2):
            runs, deadline = self.engine_runs(victim["pid"]), time.monotonic() + 30
            while self.engine_runs(victim["pid"]) == runs and time.monotonic() < deadline:
                time.sleep(0.002)
            ends.append(time.monotonic())
        time.sleep((ends[1] - ends[0]) / 2)
        ray.kill(ray.get_actor(victim["actor"], namespace="serve"), no_restart=True)


@pytest.fixture(scope="module")
def ray_app(tiny_model_path, tmp_path_factory):
    counters_dir = tmp_path_factory.mktemp("replica-counters")
    redis = RedisServer()
    redis.start()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)
    try:
        settings = ServeSettings(ReplicaSettings(redis_url=redis.url, torch_threads=1), num_replicas=2,
                                 replica_cpus=0.25, health_check_period_s=2.0,
                                 env={"PROMETHEUS_MULTIPROC_DIR": str(counters_dir)})
        loader = functools.partial(GenerativeRewardModel.load, str(tiny_model_path))
        handle = serve.run(reward_app(loader, SERVE_CONFIG, settings), name=APP, route_prefix=None)
        app = RayApp(handle, counters_dir)
        app.settings, app.loader = settings, loader
        yield app
    finally:
        serve.shutdown()
        ray.shutdown()
        redis.stop()


@pytest.mark.slow
def test_each_replica_serves_grpc_and_the_handle_answers_as_grpc_does(ray_app):
    replicas = ray_app.replicas()
    for info in replicas.values():
        with RewardClient(info["address"], timeout_s=60, retry=RetryPolicy(max_attempts=1)) as client:
            assert client.info().cache_backend == "redis"
            grpc_reply = client.score(QUERY, RESPONSES, **FAST)
    client = ServeRewardClient(ray_app.handle, timeout_s=60)
    client.wait_ready(timeout_s=60)
    handle_reply = client.score(QUERY, RESPONSES, **FAST)
    assert handle_reply.result.vote_sums == grpc_reply.result.vote_sums and handle_reply.from_cache
    with pytest.raises(ServeRpcError) as bad:  # bad input: the same status and message as over gRPC
        client.score(QUERY, RESPONSES, k=10_000)
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "k" in bad.value.details()
    # The request bytes are parsed by the servicer's own tolerant reader, as on the port.
    code, details, _, _ = ray_app.handle.call.remote("Score", b"\xff\x00garbage", 10.0, ()).result(timeout_s=60)
    assert grpc.StatusCode.INVALID_ARGUMENT.value[0] == code and "not a valid grm.v1.ScoreRequest" in details
    assert reward_client(f"serve:{APP}").info().cache_backend == "redis"  # by application name


@pytest.mark.slow
def test_a_verl_reward_function_in_the_same_ray_job_scores_through_the_handle(ray_app):
    solutions, infos = list(RESPONSES), [{"prompt": QUERY}] * 2

    @ray.remote(num_cpus=0)
    def verl_reward_worker(target):  # as verl's reward workers call a custom reward function
        return verl_compute_score_batch(["test"] * 2, solutions, [None, None], infos, target=target,
                                        on_unscored=-1.0, **FAST)
    by_name = ray.get(verl_reward_worker.remote(f"serve:{APP}"), timeout=120)
    by_handle = ray.get(verl_reward_worker.remote(ray_app.handle), timeout=120)
    over_grpc = verl_compute_score_batch(["test"] * 2, solutions, [None, None], infos, on_unscored=-1.0,
                                         target=next(iter(ray_app.replicas().values()))["address"], **FAST)
    assert plain(by_name) == plain(by_handle) == plain(over_grpc), (by_name, by_handle, over_grpc)
    # Unscored stays explicit: the stand-in that was asked for, marked scored=False.
    assert all(d["score"] == -1.0 for d in by_name if not d["scored"])
    rewards = trl_reward(ray_app.handle, timeout_s=60, **FAST)(prompts=[QUERY] * 2, completions=solutions)
    assert [r is None for r in rewards] == [not d["scored"] for d in by_name]
    asynchronous = trl_reward(f"serve:{APP}", asynchronous=True, timeout_s=60, **FAST)
    assert asyncio.run(asynchronous(prompts=[QUERY] * 2, completions=solutions)) == rewards


def plain(scores: list[dict]) -> list[dict]:
    """NaN (an unscored response's spread) spelled so that equal dicts compare equal."""
    return [{k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()} for d in scores]


@pytest.mark.slow
def test_a_replica_killed_mid_run_fails_no_request_and_runs_each_input_once(ray_app):
    """200 requests through the handle: 150 inputs, 50 of them asked again after their first
    answer. One replica's actor is killed (ray.kill) after 100 answers."""
    victim = min(ray_app.replicas().values(), key=lambda info: info["actor"])
    before = ray_app.engine_runs()
    distinct, repeated = 150, 50
    client = ServeRewardClient(ray_app.handle, timeout_s=120)
    replies: dict[int, list] = {i: [] for i in range(distinct)}
    failed: list[str] = []
    answered = threading.Semaphore(0)

    def ask(i: int) -> None:
        for _ in range(2 if i < repeated else 1):
            try:
                replies[i].append(client.score(QUERY, RESPONSES, **{**FAST, "seed": 1000 + i}))
            except Exception as e:  # counted and shown: the assertion below wants none
                failed.append(f"input {i}: {e!r}")
            answered.release()

    with ThreadPoolExecutor(16) as pool:
        for i in range(distinct):
            pool.submit(ask, i)
        for _ in range((distinct + repeated) // 2):
            answered.acquire()
        ray_app.kill_between_passes(victim)
    assert failed == [] and sum(map(len, replies.values())) == distinct + repeated
    assert ray_app.engine_runs() - before == distinct  # each input once, the dead replica's runs included
    repeats = [rs[1] for rs in replies.values() if len(rs) == 2]
    assert all(r.from_cache for r in repeats), sum(not r.from_cache for r in repeats)
    assert all(rs[1].result.vote_sums == rs[0].result.vote_sums for rs in replies.values() if len(rs) == 2)
    assert victim["actor"] not in ray_app.replicas()  # Serve replaced it


@pytest.mark.slow
def test_grm_serve_ray_deploys_the_application_and_sigterm_takes_it_down(ray_app, tiny_model_path):
    """The command line, joining the module's Ray: one replica, reached over gRPC and by name."""
    cmd = [sys.executable, "-m", "grm_cli", "serve-ray", "--ray-address", ray.get_runtime_context().gcs_address,
           "--app-name", "grm-cli", "--model", str(tiny_model_path), "--replica-cpus", "0.25",
           "--default-k", "2", "--default-max-new-tokens", "16", "--metrics-port", "-1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = [next(proc.stdout) for _ in range(2)]
        assert lines[0].startswith("replica at ") and "serve:grm-cli" in lines[1], lines
        address = lines[0].split()[2]
        with RewardClient(address, timeout_s=60, retry=RetryPolicy(max_attempts=1)) as client:
            over_grpc = client.score(QUERY, RESPONSES, **FAST)
        by_name = reward_client("serve:grm-cli", timeout_s=60).score(QUERY, RESPONSES, **FAST)
        assert by_name.from_cache and by_name.result.vote_sums == over_grpc.result.vote_sums
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0 and proc.stdout.read().splitlines()[-1] == "stopped"
        assert not _serving(address) and APP in serve.status().applications
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_replicas_that_serve_stops_drain_the_grpc_calls_in_flight(ray_app):
    """A slow ScoreBatch on each replica's port, no retries; meanwhile the application is
    deleted, so Serve stops both replicas as it stops any it removes (scale-down, new
    version). Each replica's server drains its call before its actor goes: both succeed.
    (Runs last: it takes the module's application down.)"""
    addresses = [info["address"] for info in ray_app.replicas().values()]
    items = [_item(seed) for seed in range(8)]

    def slow_batch(address: str):
        with RewardClient(address, timeout_s=120, retry=RetryPolicy(max_attempts=1)) as client:
            return client.score_batch(items, k=8, max_new_tokens=256, cache_policy="bypass")  # seconds
    with ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(slow_batch, a) for a in addresses]
        time.sleep(1.0)  # both calls are in the engines
        deleted = pool.submit(serve.delete, APP)
        outs = [c.result(timeout=120) for c in calls]
        deleted.result(timeout=120)
    assert all(len(o) == len(items) for o in outs)
    assert not any(_serving(a) for a in addresses)  # and then the servers stopped


def _item(seed: int):
    from grm.types import ScoreInput
    return ScoreInput(f"{QUERY} ({seed})", RESPONSES)


def _serving(address: str) -> bool:
    with RewardClient(address, timeout_s=2, retry=RetryPolicy(max_attempts=1)) as client:
        try:
            client.info()
            return True
        except grpc.RpcError:
            return False


def test_the_health_probe_fails_once_the_replica_drains_and_handle_calls_keep_grpc_semantics(judge):
    """A replica object without Serve: what Serve's health probe and handle calls run."""
    replica = RewardReplica(judge, SERVE_CONFIG, ReplicaSettings())
    try:
        replica.check_health()  # serving: no error

        def call(method: str, request: bytes, timeout_s=None):
            return asyncio.run(replica.call(method, request, timeout_s))
        assert call("Nope", b"")[0] == grpc.StatusCode.UNIMPLEMENTED.value[0]
        slow = score_request(QUERY, RESPONSES, k=8, max_new_tokens=256, cache_policy="bypass").SerializeToString()
        code, details, _, _ = call("Score", slow, timeout_s=0.05)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], details
        code, _, reply, trailing = call("GetInfo", b"")
        assert code == 0 and pb.GetInfoResponse.FromString(reply).model_id == judge.model_id
        assert dict(trailing)["grm-replica"] == replica.server.server.servicer.replica_id
    finally:
        replica.__del__()  # what Serve runs when it removes the replica
    with pytest.raises(RuntimeError, match="shutting down"):
        replica.check_health()


@pytest.mark.parametrize("flags, message", [
    (["--port", "50051"], "--max-replicas-per-node 1"),
    (["--min-replicas", "2"], "--min-replicas and --max-replicas together"),
    (["--min-replicas", "3", "--max-replicas", "2"], "0 < --min-replicas <= --max-replicas"),
])
def test_grm_serve_ray_names_the_flag_at_fault(flags, message):
    args = build_parser().parse_args(["serve-ray", *flags])
    with pytest.raises(ValueError, match=message):
        serve_settings(args)


def test_grm_serve_ray_turns_flags_into_serve_settings():
    args = build_parser().parse_args(["serve-ray", "--min-replicas", "1", "--max-replicas", "4", "--replica-cpus", "2",
                                      "--redis-url", "redis+cluster://10.0.0.5:7000", "--port", "50051",
                                      "--max-replicas-per-node", "1"])
    settings = serve_settings(args)
    assert settings.autoscaling == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16.0}
    assert settings.replica == ReplicaSettings(port=50051, redis_url="redis+cluster://10.0.0.5:7000", torch_threads=2)
