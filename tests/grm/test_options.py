"""The sampling rules in their one home (``SamplingOptions``, ``AggregationOptions.check``), the
defaults they start from, and the judge's seeded streams pinned to their values."""

from __future__ import annotations

import dataclasses
import random

import pytest

from grm import defaults
from grm.aggregation import best_index
from grm.prompts import sample_permutations
from grm.seeds import mix_seed, rng
from grm.types import Aggregation, AggregationOptions, Limits, SamplingOptions, ValidationError


def test_defaults_come_from_grm_defaults():
    opts = SamplingOptions()
    assert (opts.k, opts.temperature, opts.top_p, opts.max_new_tokens) == (8, 0.5, 1.0, 512)
    assert (defaults.K, defaults.TEMPERATURE, defaults.MAX_NEW_TOKENS) == (8, 0.5, 512)
    assert [defaults.default_k_meta(k) for k in (1, 2, 3, 8, 9)] == [1, 1, 1, 4, 4]


@pytest.mark.parametrize("fields,limits,message", [
    (dict(k=0), None, "sampling.k must be in 1..256, got 0"),
    (dict(k=9), Limits(max_k=8), "sampling.k must be in 1..8, got 9"),
    (dict(max_new_tokens=0), None, "sampling.max_new_tokens must be >= 1, got 0"),
    (dict(max_new_tokens=65), Limits(max_new_tokens=64), "sampling.max_new_tokens must be in 1..64, got 65"),
    (dict(temperature=float("nan")), None, "sampling.temperature must be in [0, 10], got nan"),
    (dict(top_p=0.0), None, "sampling.top_p must be in (0, 1], got 0.0"),
    (dict(seed=-1), None, "sampling.seed must be in 0..9223372036854775807, got -1"),
    (dict(adaptive="sometimes"), None, "sampling.adaptive must be one of off, decided, confident, got 'sometimes'"),
])
def test_sampling_rules_name_the_field_the_limit_and_the_value(fields, limits, message):
    with pytest.raises(ValidationError) as error:
        SamplingOptions(**fields, limits=limits)
    assert str(error.value) == message and message.startswith(error.value.field)


def test_limits_are_not_stored_and_replace_rechecks():
    opts = SamplingOptions(k=8, limits=Limits(max_k=8))
    assert opts == SamplingOptions(k=8) and "limits" not in dataclasses.asdict(opts)
    with pytest.raises(ValidationError, match="sampling.k must be in 1..4, got 8"):
        dataclasses.replace(opts, limits=Limits(max_k=4))
    with pytest.raises(ValueError, match="default sampling.k must be in 1..4, got 8"):
        Limits(max_k=4).check_defaults(opts)


def test_aggregation_rules_join_the_options_and_the_judge():
    meta = AggregationOptions(Aggregation.META_VOTING, k_meta=2)
    meta.check(SamplingOptions(k=4), meta_rm=True)
    with pytest.raises(ValidationError, match="aggregation.method META_VOTING needs a meta RM"):
        meta.check(SamplingOptions(k=4), meta_rm=False)
    with pytest.raises(ValidationError, match=r"aggregation.k_meta must be in 1..k \(1\), got 2"):
        meta.check(SamplingOptions(k=1), meta_rm=True)
    with pytest.raises(ValidationError, match="sampling.adaptive works with voting only"):
        AggregationOptions(Aggregation.META_VOTING).check(SamplingOptions(adaptive="decided"), meta_rm=True)
    AggregationOptions().check(SamplingOptions(adaptive="decided"), meta_rm=False)


def test_streams_are_named_by_their_parts():
    assert rng("grm-best", 3).random() == random.Random("grm-best:3").random()
    assert rng("a", 1).random() != rng("a", 2).random()
    assert mix_seed("a", 1) == mix_seed("a:1")  # the same name, the same seed


def test_the_judges_streams_are_pinned():
    """A change here moves every served judgment (permutations) or best index (tie-break)."""
    assert sample_permutations(2, k=4, seed=0) == [(0, 1), (0, 1), (1, 0), (0, 1)]
    assert sample_permutations(3, k=4, seed=1) == [(2, 0, 1), (0, 1, 2), (0, 1, 2), (0, 2, 1)]
    assert [best_index((5, 5, 5, 5), seed) for seed in range(8)] == [2, 2, 2, 0, 0, 2, 2, 3]
