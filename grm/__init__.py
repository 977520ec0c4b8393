"""A generative reward model (DeepSeek-GRM style): principles, critiques, k samples, voting.

    from grm import GenerativeRewardModel
    grm = GenerativeRewardModel.load("path/to/checkpoint")
    result = grm.score("Name a prime number.", ["7", "9"], k=8)
    result.rewards, result.vote_sums, result.judgments[0].critique
"""

from grm.judge import GenerativeRewardModel, InputTooLong
from grm.types import (Aggregation, AggregationOptions, InvalidReason, Judgment, Message,
                       SamplingOptions, ScoreInput, ScoreResult)

__all__ = [
    "Aggregation", "AggregationOptions", "GenerativeRewardModel", "InputTooLong", "InvalidReason",
    "Judgment", "Message", "SamplingOptions", "ScoreInput", "ScoreResult",
]
__version__ = "0.1.0"
