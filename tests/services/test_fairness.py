"""Per-caller budgets count work, and callers are served in turn: a flooder within its limits
leaves a polite caller's latency near its solo figure and its calls all answered.

The service test runs both callers (by bearer token) on one in-process server over the
tiny judge, solo and flooded side by side; its bound is a ratio of medians, so a loaded
machine slows both phases alike. ``benchmarks/fairness.py`` prints the same figures.
"""

from __future__ import annotations

import dataclasses

import pytest
from service_helpers import CONFIG

from services.admission import Admission, AdmissionConfig, Refused, requested_sequences
from services.proto.grm.v1 import reward_pb2 as pb
from services.scheduler import SchedulerConfig
from services.server import BackgroundServer
from services.testing.flood import Flooder, polite_calls, summary, write_tokens


def test_the_budget_counts_sequences_not_calls():
    admission = Admission(AdmissionConfig(max_sequences_per_caller=64))
    admission.enter("a", sequences=48)
    with pytest.raises(Refused, match=r"48 sequences in progress; this call's 32 would pass max_sequences_per_caller \(64\)"):
        admission.enter("a", sequences=32)
    admission.enter("a", sequences=16)  # small calls still fit beside it
    admission.enter("b", sequences=64)  # another caller has its own budget
    admission.leave("a", sequences=48)
    admission.leave("a", sequences=16)
    admission.enter("a", sequences=500)  # larger than the budget: runs when it is the caller's only call
    with pytest.raises(Refused):
        admission.enter("a", sequences=1)


def test_a_request_counts_inputs_times_k():
    batch = pb.ScoreBatchRequest(items=[pb.ScoreInput()] * 8, sampling=pb.SamplingOptions(k=4))
    assert requested_sequences(batch, default_k=2) == 32
    assert requested_sequences(pb.ScoreRequest(), default_k=2) == 2  # k unset: the server's default
    assert requested_sequences(pb.GetInfoRequest(), default_k=2) == 0


@pytest.mark.slow
def test_a_flooder_within_its_limits_leaves_a_polite_caller_near_its_solo_latency(judge, tmp_path):
    # Passes of one input (k=2): a caller waits for the pass in progress, then its own.
    config = dataclasses.replace(
        CONFIG, metrics_port=None, token_file=str(write_tokens(tmp_path / "tokens")),
        scheduler=SchedulerConfig(max_wait_ms=5, max_batch_sequences=2),
        admission=dataclasses.replace(CONFIG.admission, max_sequences_per_caller=32))
    with BackgroundServer(judge, config=config) as bg:
        polite_calls(bg.address, 2, max_new_tokens=64, tag="warm-up")
        solo = polite_calls(bg.address, 15, max_new_tokens=64)
        with Flooder(bg.address, calls=4, items=8, k=2, max_new_tokens=64) as flood:
            flooded = polite_calls(bg.address, 15, max_new_tokens=64, tag="flooded")
    (solo_s, solo_ok), (flooded_s, flooded_ok) = summary(solo), summary(flooded)
    print(f"polite caller: solo median {solo_s:.3f} s, flooded {flooded_s:.3f} s ({flooded_s / solo_s:.2f}x); "
          f"flooder: {dict(flood.codes)}")
    assert solo_ok == flooded_ok == 1.0, (solo, flooded)
    assert flooded_s <= 3 * solo_s, (solo, flooded)  # FIFO, as before: 19x here
    assert flood.codes["OK"] >= 1 and set(flood.codes) <= {"OK", "RESOURCE_EXHAUSTED"}  # served, or refused with a hint
