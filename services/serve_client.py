"""Scoring through a Ray Serve handle: the gRPC clients' calls, types and retries, no port.

A trainer in the same Ray cluster as the reward application (services/ray_serve.py)
reaches it through Serve's handle: ``ServeRewardClient`` and ``AsyncServeRewardClient``
are ``RewardClient`` and ``AsyncRewardClient`` (services/client.py) whose calls go to
``RewardReplica.call`` instead of a channel. Requests and replies are the same protobuf
messages, serialized; a replica answers with the status code its gRPC port would have
given, raised here as a ``grpc.RpcError`` (``ServeRpcError``), so ``score_rows``, unscored
responses (reward None), ``RetryPolicy`` and every adapter behave as over gRPC. Ray's own
failures get codes too: a replica that died or cannot be reached is UNAVAILABLE (retried,
and Serve's router sends the retry to another replica), Serve's back pressure is
RESOURCE_EXHAUSTED, a call past its deadline DEADLINE_EXCEEDED.

A target is a ``DeploymentHandle`` or ``"serve:APP"`` (the handle of application APP,
looked up on first use, so it fits a YAML config or ``GRM_TARGET``). ``reward_client``
and ``async_reward_client`` pick the right client for any target; a gRPC address never
imports Ray.

    client = reward_client("serve:grm", timeout_s=120)      # or reward_client(handle)
    client.score_rows([Row("2+2?", "4"), Row("2+2?", "5")], k=4)
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from services.client import AsyncRewardClient, ClientCore, ClientTLS, RetryPolicy, RewardClient, info_from_proto
from services.proto.grm.v1 import reward_pb2 as pb

SERVE_PREFIX = "serve:"
_CODES = {c.value[0]: c for c in grpc.StatusCode}
_REPLIES = {"Score": pb.ScoreResponse, "ScoreBatch": pb.ScoreBatchResponse, "GetInfo": pb.GetInfoResponse}


def is_serve_target(target: Any) -> bool:
    """A Serve handle or ``"serve:APP"``, as opposed to a gRPC ``host:port[,...]``."""
    return not isinstance(target, str) or target.startswith(SERVE_PREFIX)


def reward_client(target: Any, *, timeout_s: float = 120.0, retry: RetryPolicy = RetryPolicy(),
                  tls: ClientTLS | None = None, token: str | None = None) -> RewardClient:
    """A ``ServeRewardClient`` for a Serve target, else a gRPC ``RewardClient``."""
    if is_serve_target(target):
        return ServeRewardClient(target, timeout_s=timeout_s, retry=retry, token=token)
    return RewardClient(target, timeout_s=timeout_s, retry=retry, tls=tls, token=token)


def async_reward_client(target: Any, *, timeout_s: float = 120.0, retry: RetryPolicy = RetryPolicy(),
                        tls: ClientTLS | None = None, token: str | None = None) -> AsyncRewardClient:
    if is_serve_target(target):
        return AsyncServeRewardClient(target, timeout_s=timeout_s, retry=retry, token=token)
    return AsyncRewardClient(target, timeout_s=timeout_s, retry=retry, tls=tls, token=token)


class ServeRpcError(grpc.RpcError):
    """A call through the handle ended with ``code``; read like a gRPC error."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple = ()):
        super().__init__(f"{code.name}: {details}")
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailing


class _HandleStub:
    """``Score``, ``ScoreBatch`` and ``GetInfo`` with a stub's signature, over a Serve handle."""

    def __init__(self, target: Any, asynchronous: bool):
        self._target, self._handle = target, None if isinstance(target, str) else target
        call = self._acall if asynchronous else self._call
        for name in _REPLIES:
            setattr(self, name, lambda request, timeout=None, metadata=None, name=name: call(
                name, request, timeout, metadata))

    def _remote(self, name: str, request, timeout: float | None, metadata):
        if self._handle is None:
            from ray import serve
            self._handle = serve.get_app_handle(self._target[len(SERVE_PREFIX):])
        return self._handle.call.remote(name, request.SerializeToString(), timeout, tuple(metadata or ()))

    def _call(self, name: str, request, timeout: float | None, metadata):
        try:
            answer = self._remote(name, request, timeout, metadata).result(timeout_s=timeout)
        except Exception as e:
            raise _as_rpc_error(e) from e
        return _reply(name, answer)

    async def _acall(self, name: str, request, timeout: float | None, metadata):
        try:
            answer = await asyncio.wait_for(self._remote(name, request, timeout, metadata), timeout)
        except Exception as e:
            raise _as_rpc_error(e) from e
        return _reply(name, answer)


def _reply(name: str, answer: tuple[int, str, bytes, tuple]):
    code, details, payload, trailing = answer
    if code != grpc.StatusCode.OK.value[0]:
        raise ServeRpcError(_CODES.get(code, grpc.StatusCode.UNKNOWN), details, tuple(trailing))
    return _REPLIES[name].FromString(payload)


def _as_rpc_error(e: Exception) -> Exception:
    """Ray's failure as the status code a gRPC client would have seen; anything else as it is."""
    from ray import exceptions as ray_errors
    from ray.serve import exceptions as serve_errors

    if isinstance(e, ServeRpcError):
        return e
    if isinstance(e, (ray_errors.RayActorError, serve_errors.DeploymentUnavailableError)):
        return ServeRpcError(grpc.StatusCode.UNAVAILABLE, f"the replica is gone or unreachable: {e}")
    if isinstance(e, serve_errors.BackPressureError):
        return ServeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"every replica is full: {e}")
    if isinstance(e, (ray_errors.GetTimeoutError, TimeoutError, asyncio.TimeoutError)):
        return ServeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed")
    if isinstance(e, serve_errors.RequestCancelledError):
        return ServeRpcError(grpc.StatusCode.CANCELLED, str(e))
    if isinstance(e, ray_errors.RayTaskError):
        return ServeRpcError(grpc.StatusCode.INTERNAL, f"the replica failed: {e}")
    return e


class ServeRewardClient(RewardClient):
    """``RewardClient`` over a Serve handle; see the module docstring."""

    def __init__(self, target: Any, *, timeout_s: float = 120.0, retry: RetryPolicy = RetryPolicy(),
                 token: str | None = None):
        ClientCore.__init__(self, target, timeout_s, retry, token)  # no channel: the handle is the transport
        self._stub = _HandleStub(target, asynchronous=False)

    def _ready(self, left_s: float) -> bool:
        """A replica answers GetInfo (``wait_ready`` polls this)."""
        info_from_proto(self._stub.GetInfo(pb.GetInfoRequest(), timeout=left_s, metadata=self._auth))
        return True

    def close(self) -> None:
        """Nothing to close: the handle belongs to Ray."""


class AsyncServeRewardClient(AsyncRewardClient):
    """``AsyncRewardClient`` over a Serve handle."""

    def __init__(self, target: Any, *, timeout_s: float = 120.0, retry: RetryPolicy = RetryPolicy(),
                 token: str | None = None):
        super().__init__(target, timeout_s=timeout_s, retry=retry, token=token)
        self._handle_stub = _HandleStub(target, asynchronous=True)

    def _ensure(self) -> _HandleStub:
        return self._handle_stub

    async def close(self) -> None:
        """Nothing to close: the handle belongs to Ray."""
