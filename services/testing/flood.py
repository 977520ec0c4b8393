"""Two callers on one server, by bearer token: a flooder that keeps several large ScoreBatch
calls in flight (honouring the server's retry hints, as the project's clients do) and a
polite caller that sends one small Score at a time. Used by the fairness test and by
``benchmarks/fairness.py``::

    write_tokens(path)                                      # the two callers' tokens
    solo = polite_calls(address, 10)                        # [(seconds, status code name)]
    with Flooder(address, calls=4, items=8, k=2) as flood:
        flooded = polite_calls(address, 10, tag="flooded")
    flood.codes                                             # {"OK": 31, "RESOURCE_EXHAUSTED": 57}
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import grpc

from services.proto.grm.v1 import reward_pb2 as pb
from services.proto.grm.v1 import reward_pb2_grpc as pb_grpc

TOKENS = {"polite": "polite-caller-token-0001", "flooder": "flooder-caller-token-0002"}


def write_tokens(path: Path) -> Path:
    path.write_text("".join(f"{name} {token}\n" for name, token in TOKENS.items()))
    return path


def _metadata(name: str) -> tuple:
    return (("authorization", f"Bearer {TOKENS[name]}"),)


def _input(query: str) -> pb.ScoreInput:
    return pb.ScoreInput(conversation=[pb.Message(role="user", content=query)], responses=["7", "9"])


def polite_calls(address: str, n: int, k: int = 2, max_new_tokens: int = 16, tag: str = "solo",
                 timeout_s: float = 60.0) -> list[tuple[float, str]]:
    """``n`` Score calls one after another (each a new input, cache bypassed): (latency, code) each."""
    out = []
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.RewardServiceStub(channel)
        for i in range(n):
            request = pb.ScoreRequest(input=_input(f"Polite {tag} {i}: name a prime number."),
                                      sampling=pb.SamplingOptions(k=k, max_new_tokens=max_new_tokens, seed=i),
                                      cache_policy=pb.CACHE_POLICY_BYPASS)
            start = time.perf_counter()
            try:
                stub.Score(request, timeout=timeout_s, metadata=_metadata("polite"))
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            out.append((time.perf_counter() - start, code))
    return out


def summary(calls: list[tuple[float, str]]) -> tuple[float, float]:
    """(median latency in s, share of calls answered OK)."""
    return statistics.median(s for s, _ in calls), sum(c == "OK" for _, c in calls) / len(calls)


class Flooder:
    """``calls`` threads, each sending ScoreBatch calls of ``items`` new inputs back to back; a
    refusal is waited out for its ``grpc-retry-pushback-ms`` and the call is sent again."""

    def __init__(self, address: str, calls: int = 4, items: int = 8, k: int = 2, max_new_tokens: int = 16):
        self.address, self.calls, self.items, self.k, self.max_new_tokens = address, calls, items, k, max_new_tokens
        self.codes: Counter = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(calls)]

    def __enter__(self) -> "Flooder":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def _run(self, worker: int) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.RewardServiceStub(channel)
            sent = 0
            while not self._stop.is_set():
                items = [_input(f"Flood {worker}.{sent}.{j}: name a prime number.") for j in range(self.items)]
                request = pb.ScoreBatchRequest(items=items, cache_policy=pb.CACHE_POLICY_BYPASS,
                                               sampling=pb.SamplingOptions(k=self.k, max_new_tokens=self.max_new_tokens))
                try:
                    stub.ScoreBatch(request, timeout=120, metadata=_metadata("flooder"))
                    self.codes["OK"] += 1
                    sent += 1
                except grpc.RpcError as e:
                    self.codes[e.code().name] += 1
                    pushback = dict(e.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
                    self._stop.wait(int(pushback) / 1000 if pushback else 0.5)
