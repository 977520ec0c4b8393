"""The last N scored inputs, kept for the inspector's "recent requests" pages.

Recording is off unless ``grm serve --record N`` asks for it: inputs are users' data. The
servicer hands every finished call to ``RecentRequests.add`` (on its event loop, before
judgments the caller did not ask for are stripped), so each record keeps the full
judgments even when the reply did not carry them. A record holds a few summary fields
for the list page and the input and result as serialized protobuf bytes (compact, and
decoded only when one input is opened). Memory is bounded twice: at most ``capacity``
records, and at most ``max_bytes`` of serialized data; the oldest records go first.

With tokens, each record keeps the name of the token that made the call (``owner``), so
the inspector can show a caller only its own records. The caller is the gRPC peer; a call the HTTP endpoint or the inspector's "Try it" form
makes for someone else carries that someone in the ``grm-caller`` metadata
(``CALLER_METADATA``), shown together with the peer that sent it (a gRPC client could
claim anything there, the peer it cannot).

    recent = RecentRequests(capacity=1000)
    recent.add(items, outs, context, where, latency_ms)   # in the servicer, once per call
    recent.latest(50)                     # newest first, for the list page
    recent.get(record_id)                 # one record, or None once it was evicted
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Sequence

from grm.types import ScoreInput, ScoreResult
from services.convert import input_to_proto, result_from_proto
from services.proto.grm.v1 import reward_pb2 as pb
from services.security import TokenFile

CALLER_METADATA = "grm-caller"
MAX_CALLER_CHARS = 200  # metadata is the caller's text: shown, but never trusted to be short


@dataclass(frozen=True)
class Record:
    """One scored input as the service saw it."""

    id: int  # increasing; the record's address in the pages
    time: float  # seconds since the epoch, when the call finished
    caller: str  # "ipv4:127.0.0.1:5555", or "http 10.0.0.2:4000 via ipv4:127.0.0.1:5555"
    method: str  # "Score" or "ScoreBatch items[3]"
    from_cache: bool
    rewards: tuple[float | None, ...]
    spread: tuple[float | None, ...]
    num_samples: int
    num_valid: int
    latency_ms: float
    input_bytes: bytes  # a serialized pb.ScoreInput
    result_bytes: bytes  # a serialized pb.ScoreResult, judgments included
    owner: str | None = None  # the name of the caller's token (None: the server checks no tokens)

    @property
    def num_invalid(self) -> int:
        return self.num_samples - self.num_valid

    @property
    def size(self) -> int:
        return len(self.input_bytes) + len(self.result_bytes)

    def input(self) -> ScoreInput:
        msg = pb.ScoreInput.FromString(self.input_bytes)
        return ScoreInput([{"role": m.role, "content": m.content} for m in msg.conversation], list(msg.responses),
                          msg.principles if msg.HasField("principles") else None,
                          msg.reference if msg.HasField("reference") else None)

    def result(self) -> ScoreResult:
        return result_from_proto(pb.ScoreResult.FromString(self.result_bytes))


@dataclass(frozen=True)
class RecordingConfig:
    capacity: int  # records kept
    max_bytes: int = 512 * 2**20  # serialized inputs and results kept, at most

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"RecordingConfig.capacity must be >= 1, got {self.capacity}")
        if self.max_bytes < 1:
            raise ValueError(f"RecordingConfig.max_bytes must be >= 1, got {self.max_bytes}")


def caller_of(context) -> str:
    """Who made a gRPC call: its peer, and the caller it speaks for when it says so."""
    peer = context.peer() or "unknown peer"
    for key, value in context.invocation_metadata() or ():
        if key == CALLER_METADATA:
            return f"{str(value)[:MAX_CALLER_CHARS]} via {peer}"
    return peer


class RecentRequests:
    """A bounded ring of ``Record``; written on the server's loop, read from the HTTP thread."""

    def __init__(self, capacity: int, max_bytes: int = RecordingConfig.max_bytes, tokens: TokenFile | None = None):
        self.config = RecordingConfig(capacity, max_bytes)
        self.tokens = tokens  # names each record's owner
        self._records: deque[Record] = deque()
        self._bytes = 0
        self._next_id = 1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._records)

    def add(self, items: Sequence, outs: Sequence, context, where: Sequence[str], latency_ms: float) -> None:
        """Record every scored item of one call: ``outs[i]`` is a ``pb.ScoreResult`` or an
        error, ``where[i]`` the servicer's name for the item ("input" in a Score call)."""
        scored = [(item, out, w) for item, out, w in zip(items, outs, where) if isinstance(out, pb.ScoreResult)]
        if not scored:
            return
        caller, now = caller_of(context), time.time()
        owner = None if self.tokens is None else self.tokens.identify(
            dict(context.invocation_metadata() or ()).get("authorization"))
        for item, out, w in scored:
            self._push(caller, owner, now, "Score" if w == "input" else f"ScoreBatch {w}", item, out, latency_ms)

    def _push(self, caller: str, owner: str | None, now: float, method: str, item: ScoreInput,
              out: pb.ScoreResult, latency_ms: float) -> None:
        responses = out.responses
        fields = dict(caller=caller, owner=owner, time=now, method=method, from_cache=out.from_cache,
                      rewards=tuple(r.reward if r.scored else None for r in responses),
                      spread=tuple(r.spread if r.scored and r.HasField("spread") else None for r in responses),
                      num_samples=out.num_samples, num_valid=out.num_valid, latency_ms=latency_ms,
                      input_bytes=input_to_proto(item).SerializeToString(), result_bytes=out.SerializeToString())
        with self._lock:
            record = Record(id=self._next_id, **fields)
            self._next_id += 1
            self._records.append(record)
            self._bytes += record.size
            while len(self._records) > self.config.capacity or (self._bytes > self.config.max_bytes
                                                                 and len(self._records) > 1):
                self._bytes -= self._records.popleft().size

    def latest(self, limit: int | None = None) -> list[Record]:
        """The newest ``limit`` records (all by default), newest first."""
        with self._lock:
            records = list(self._records)
        records.reverse()
        return records if limit is None else records[:limit]

    def get(self, record_id: int) -> Record | None:
        with self._lock:
            if not self._records or not self._records[0].id <= record_id <= self._records[-1].id:
                return None
            return self._records[record_id - self._records[0].id]  # ids are consecutive in the ring

    @property
    def bytes(self) -> int:
        return self._bytes
