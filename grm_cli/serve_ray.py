"""``grm serve-ray``: the reward service as a Ray Serve application, until SIGTERM.

    grm serve-ray --replicas 2 --redis-url redis://10.0.0.5:6379/0            # local Ray, or $RAY_ADDRESS
    grm serve-ray --ray-address auto --min-replicas 1 --max-replicas 8 \\
        --port 50051 --max-replicas-per-node 1 --host 0.0.0.0 --token-file tokens.txt

Takes every flag of ``grm serve`` (model, engines, limits, cache, security) for the server
inside each replica, plus how Ray runs the replicas. Prints one ``replica at HOST:PORT``
line per replica once they serve, and ``serving application NAME``: trainers in the same
Ray cluster score through ``serve:NAME`` (services/serve_client.py). SIGTERM deletes the
application, which drains every replica (services/ray_serve.py). Needs the ``ray`` extra.
"""

from __future__ import annotations

import argparse
import signal
import threading

from grm_cli import serve
from grm_cli.engine_flags import serve_loader

NAME = "serve-ray"
HELP = "serve the GRM as a Ray Serve application (replicas placed, restarted and scaled by Ray)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    serve.add_arguments(p)
    p.set_defaults(port=0)  # several replicas on one node cannot share a port
    ray = p.add_argument_group("ray")
    ray.add_argument("--ray-address", help="Ray cluster to join ('auto', 'ray://host:10001'); "
                     "default: $RAY_ADDRESS, else a local Ray started here")
    ray.add_argument("--app-name", default="grm", help="Serve application name (trainers use serve:NAME)")
    ray.add_argument("--replicas", type=int, default=1, help="replicas when not autoscaling (default 1)")
    ray.add_argument("--min-replicas", type=int, help="autoscale between --min-replicas and --max-replicas")
    ray.add_argument("--max-replicas", type=int)
    ray.add_argument("--target-ongoing-requests", type=float, default=16.0,
                     help="autoscaling: handle calls in flight per replica it aims for (default 16)")
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica")
    ray.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs Ray reserves per replica")
    ray.add_argument("--max-replicas-per-node", type=int,
                     help="at most this many replicas per node (1 with a fixed --port: one server per node)")


def serve_settings(args: argparse.Namespace):
    """The ServeSettings the flags ask for (ValueError names the flag at fault)."""
    from services.ray_serve import ReplicaSettings, ServeSettings  # imports ray

    if args.port and args.max_replicas_per_node != 1:
        raise ValueError(f"--port {args.port} is fixed: add --max-replicas-per-node 1 (two replicas on one "
                         "node cannot share a port), or leave --port 0 for a free port per replica")
    if (args.min_replicas is None) != (args.max_replicas is None):
        raise ValueError("give --min-replicas and --max-replicas together")
    autoscaling = None
    if args.min_replicas is not None:
        if not 0 < args.min_replicas <= args.max_replicas:
            raise ValueError(f"need 0 < --min-replicas <= --max-replicas, got {args.min_replicas}, "
                             f"{args.max_replicas}")
        autoscaling = {"min_replicas": args.min_replicas, "max_replicas": args.max_replicas,
                       "target_ongoing_requests": args.target_ongoing_requests}
    threads = args.threads or max(1, round(args.replica_cpus))
    replica = ReplicaSettings(host=args.host, port=args.port, redis_url=None if args.no_cache else args.redis_url,
                              cache_ttl_s=args.cache_ttl, torch_threads=threads)
    return ServeSettings(replica, num_replicas=args.replicas, autoscaling=autoscaling,
                         replica_cpus=args.replica_cpus, replica_gpus=args.replica_gpus,
                         max_replicas_per_node=args.max_replicas_per_node)


def run(args: argparse.Namespace) -> int:
    try:
        config = serve.server_config(args)
        settings = serve_settings(args)
        loader = serve_loader(args)
    except ValueError as e:
        raise SystemExit(f"grm serve-ray: {e}") from None
    import ray
    from ray import serve as ray_serve

    from services.ray_serve import live_replicas, reward_app

    ray.init(address=args.ray_address, configure_logging=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        handle = ray_serve.run(reward_app(loader, config, settings), name=args.app_name, route_prefix=None)
        want = args.min_replicas if args.min_replicas is not None else args.replicas
        for info in live_replicas(handle, want).values():
            print(f"replica at {info['address']} (metrics port {info['metrics_port']})", flush=True)
        print(f"serving application {args.app_name}: trainers in this Ray cluster use serve:{args.app_name}",
              flush=True)
        stop.wait()
        print(f"shutting down: draining the replicas (up to {config.grace_s:g} s)", flush=True)
        ray_serve.delete(args.app_name)
    finally:
        ray.shutdown()
    print("stopped", flush=True)
    return 0
