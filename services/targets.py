"""Several replicas behind one client channel: gRPC's own load balancing, health checks and retries.

``balanced_target("10.0.0.1:50051,10.0.0.2:50051")`` turns a comma-separated list of
``host:port`` into what a gRPC channel needs to spread calls over them:

- the target ``ipv4:10.0.0.1:50051,10.0.0.2:50051`` (host names are resolved once, here;
  all addresses must be of one family, as gRPC's ``ipv4:``/``ipv6:`` schemes require);
- a service config with the ``round_robin`` policy, so each call goes to the next ready
  replica; client-side health checking of ``grm.v1.RewardService``, so a replica that is
  still loading or is draining (health NOT_SERVING) gets no calls; and a retry policy
  that sends a call that failed with UNAVAILABLE (a replica gone mid-call, refusing while
  it shuts down) to another replica, up to ``MAX_ATTEMPTS`` times.

A single target (``host:port``, ``dns:///name:port``, ...) is passed through with no
options: one server, or a name that a resolver turns into several addresses. Every
client of the project opens its channel through ``services.channel.open_channel``, which
calls this, so ``RewardClient``, the adapters and ``GRM_TARGET`` all accept such lists.

Example::

    target, options = balanced_target("127.0.0.1:50051,127.0.0.1:50052")
    channel = grpc.insecure_channel(target, options=options)
"""

from __future__ import annotations

import ipaddress
import json
import socket

from services.convert import SERVICE_NAME

MAX_ATTEMPTS = 4  # per call, the first included (gRPC caps it at 5)


def service_config(max_attempts: int = MAX_ATTEMPTS) -> str:
    return json.dumps({
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": SERVICE_NAME},
        "methodConfig": [{
            "name": [{"service": SERVICE_NAME}],
            "retryPolicy": {"maxAttempts": max_attempts, "initialBackoff": "0.05s", "maxBackoff": "1s",
                            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
        }],
    })


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"target {address!r} must be host:port (in a comma-separated list of replicas)")
    return host.strip("[]"), int(port)


def _resolve(host: str, port: int) -> str:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
    except socket.gaierror as e:
        raise ValueError(f"target host {host!r} does not resolve: {e}") from None


def balanced_target(target: str) -> tuple[str, list[tuple[str, object]]]:
    """(channel target, channel options) for ``target``; see the module docstring."""
    if "," not in target:
        return target, []
    addresses = [split_host_port(part) for part in target.split(",") if part.strip()]
    resolved = [(_resolve(host, port), port) for host, port in addresses]
    families = {ipaddress.ip_address(ip).version for ip, _ in resolved}
    if len(families) > 1:
        raise ValueError(f"target {target!r} mixes IPv4 and IPv6 addresses; gRPC needs one family per channel")
    if families == {6}:
        joined = ",".join(f"[{ip}]:{port}" for ip, port in resolved)
        channel_target = f"ipv6:{joined}"
    else:
        channel_target = "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in resolved)
    return channel_target, [("grpc.service_config", service_config()), ("grpc.enable_retries", 1)]
