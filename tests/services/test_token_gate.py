"""With tokens, a call without one is refused on its metadata before its message is read:
a tokenless caller cannot make the server receive a large request (the outside probe's 6
tokenless 64 MiB Score calls grew the server by 600 MB). A request larger than the receive
limit tells the two apart: read, grpc refuses it as too large (RESOURCE_EXHAUSTED);
refused on metadata, it is UNAUTHENTICATED without being received."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest

from service_helpers import CONFIG, LIMITS
from services.cache import MemoryCache
from services.proto.grm.v1 import reward_pb2 as pb
from services.server import BackgroundServer

TOKEN = "gate-test-token-0123456789"
BIG = 4 * LIMITS.max_message_bytes  # past the server's receive limit
OPTIONS = [("grpc.max_send_message_length", 64 << 20)]


@pytest.fixture(scope="module")
def gated(judge, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    tokens.write_text(f"trainer {TOKEN}\n")
    bg = BackgroundServer(judge, "127.0.0.1:0", replace(CONFIG, token_file=str(tokens)),
                          cache_factory=MemoryCache).start()
    yield bg
    bg.stop()


def call(address: str, data: bytes, token: str | None) -> grpc.RpcError:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(address, options=OPTIONS) as channel:
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/grm.v1.RewardService/Score")(data, metadata=metadata, timeout=60)
    return err.value


def big_request() -> bytes:
    item = pb.ScoreInput(conversation=[pb.Message(role="user", content="q")], responses=["r" * BIG])
    return pb.ScoreRequest(input=item).SerializeToString()


@pytest.mark.parametrize("token", [None, "not-the-token-at-all"], ids=["no token", "a wrong token"])
def test_a_large_request_without_a_token_is_refused_unread(gated, token):
    err = call(gated.address, big_request(), token)
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED, err.details()
    assert "bearer token" in err.details()
    assert gated.metrics.value("grm_caller_requests_total", caller="(no valid token)", code="UNAUTHENTICATED") >= 1


def test_with_the_token_the_receive_limit_still_holds(gated):
    assert call(gated.address, big_request(), TOKEN).code() is grpc.StatusCode.RESOURCE_EXHAUSTED
