"""Pure pieces: request validation (defaults, limits) and result conversion (unscored stays None)."""

from __future__ import annotations

import pytest

from grm.types import Aggregation, InvalidReason, Judgment, SamplingOptions, ScoreResult
from services.convert import CachePolicy, result_from_proto, result_to_proto, sampling_to_proto
from services.proto.grm.v1 import reward_pb2 as pb
from services.validation import Limits, ValidationError, parse_batch, parse_score

LIMITS = Limits(max_responses=3, max_k=8)


def request(**fields) -> pb.ScoreRequest:
    item = pb.ScoreInput(conversation=[pb.Message(role="system", content="Be strict."),
                                       pb.Message(role="user", content="Name a prime.")], responses=["7", "9"])
    return pb.ScoreRequest(input=item, **fields)


def test_unset_fields_take_the_server_defaults_and_set_ones_win():
    defaults = SamplingOptions(k=4, temperature=0.7, max_new_tokens=32, seed=3)
    req = parse_score(request(sampling=pb.SamplingOptions(k=2, temperature=0.0)), LIMITS, defaults)
    assert req.sampling == SamplingOptions(k=2, temperature=0.0, max_new_tokens=32, seed=3)
    assert req.aggregation.aggregation is Aggregation.VOTING and req.aggregation.k_meta is None
    assert req.cache_policy is CachePolicy.USE and not req.return_judgments
    item = req.items[0]
    assert item.query == "Name a prime." and item.responses == ("7", "9") and item.principles is None


def test_batch_keeps_a_bad_item_as_its_error():
    good = request().input
    bad = pb.ScoreInput(conversation=[pb.Message(role="user", content="q")], responses=["a"] * 4)
    req = parse_batch(pb.ScoreBatchRequest(items=[good, bad]), LIMITS)
    assert req.items[0].responses == ("7", "9")
    assert isinstance(req.items[1], ValidationError) and req.items[1].field == "items[1].responses"
    assert str(req.items[1]) == "items[1].responses must hold 1..3 responses, got 4"


def test_meta_voting_needs_a_meta_rm_and_k_meta_at_most_k():
    meta = pb.AggregationOptions(method=pb.AGGREGATION_METHOD_META_VOTING, k_meta=2)
    with pytest.raises(ValidationError, match="META_VOTING needs a meta RM"):
        parse_score(request(aggregation=meta), LIMITS)
    req = parse_score(request(aggregation=meta), LIMITS, meta_available=True)
    assert req.aggregation.aggregation is Aggregation.META_VOTING and req.aggregation.k_meta == 2


def test_limits_are_validated():
    with pytest.raises(ValueError, match="Limits.max_k must be an integer >= 1, got 0"):
        Limits(max_k=0)
    with pytest.raises(ValueError, match=r"default sampling.k must be in 1\.\.4, got 8"):
        Limits(max_k=4).check_defaults(SamplingOptions(k=8))


def _result(valid: bool, read: bool = False) -> ScoreResult:
    j = Judgment(text="t", principles="p", critique="c", scores=(8, 3) if valid else None, permutation=(1, 0),
                 reason=None if valid else InvalidReason.NO_SCORES, num_tokens=5, meta_score=0.25 if valid else None,
                 expected_scores=(7.25, 3.5) if read else None)
    if valid:
        return ScoreResult(rewards=(8.0, 3.0), vote_sums=(8, 3), spread=(0.0, 0.0), num_valid=1, num_used=1,
                           best=0, judgments=(j,), prompt_tokens=10, completion_tokens=5,
                           expected_rewards=(7.25, 3.5) if read else ())
    return ScoreResult(rewards=(None, None), vote_sums=(0, 0), spread=(None, None), num_valid=0, num_used=0,
                       best=None, judgments=(j,), invalid_reasons={"no_scores": 1})


@pytest.mark.parametrize("valid,read", [(True, False), (True, True), (False, False)])
def test_result_round_trips_through_the_proto(valid, read):
    result = _result(valid, read)
    msg = pb.ScoreResult.FromString(result_to_proto(result).SerializeToString())
    assert result_from_proto(msg) == result
    assert [s.HasField("expected_reward") for s in msg.responses] == [read, read]
    assert list(msg.judgments[0].expected_scores) == ([7.25, 3.5] if read else [])
    assert msg.num_samples == 1 and [s.scored for s in msg.responses] == [valid, valid]
    if not valid:  # unscored: no reward on the wire at all, never a 0
        assert not msg.responses[0].HasField("reward") and not msg.HasField("best")


def test_sampling_to_proto_sends_only_what_was_given():
    msg = sampling_to_proto(k=4)
    assert msg.HasField("k") and not msg.HasField("temperature") and not msg.HasField("seed")
    full = sampling_to_proto(SamplingOptions(k=2), seed=9)
    assert (full.k, full.seed, full.temperature, full.HasField("shuffle")) == (2, 9, 0.5, True)
