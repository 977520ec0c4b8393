"""Adaptive k: draw an input's judgments in rounds and stop once more samples cannot help.

Pure functions, no model: the judge (``GenerativeRewardModel.run_plans``) asks
``rounds(k)`` where each round ends, draws that round for every input still open, and
asks ``stop_reason`` after each round whether an input is done.

Rounds grow: 2 samples, then 2, then doubling, each round at most ``max(2, k // 4)``
(``rounds(16)`` is ``[(0, 2), (2, 4), (4, 8), (8, 12), (12, 16)]``). Plain doubling would
make the exact rule useless: it can only stop with fewer samples left than drawn. Two rules, chosen per request
(``SamplingOptions.adaptive``):

- ``decided``: stop once the ranking of the responses by vote sum can no longer change,
  whatever the remaining samples say. A sample moves the gap between two vote sums by at
  most ``MAX_SCORE - MIN_SCORE`` (9; an invalid sample moves nothing), so the ranking is
  fixed when every two responses' sums differ by more than 9 times the samples left. A
  tie is never decided: the seed would break it, and more samples could break it the
  other way. Exact, but at k=16 it can only stop after more than 8 samples.
- ``confident``: also stop once the leader's lead over the runner-up, sample by sample
  (``d = s_leader - s_runner_up`` over the valid samples), is positive with
  ``mean(d) >= z * sd(d) / sqrt(len(d))`` and at least 2 valid samples: a one-sided
  test of "the leader really is ahead" at ``z = SamplingOptions.adaptive_z``. Samples
  that all agree (sd 0) stop at once. This one trades accuracy for tokens; the curve is in
  ``benchmarks/bench_adaptive_k.py``.

With one response there is no ranking to decide: the reward is a mean that every sample
moves, so an input with N = 1 always uses all k.

Example::

    rounds(8)                                   # [(0, 2), (2, 4), (4, 6), (6, 8)]
    stop_reason("decided", [[10, 1]] * 6, 8, 2.0)   # 'decided': gap 54 > 9 * 2 samples left
    stop_reason("confident", [[8, 3], [7, 4]], 8, 2.0)   # 'confident': d = 5, 3
"""

from __future__ import annotations

import math
from typing import Sequence

from grm.types import MAX_SCORE, MIN_SCORE, StrEnum

MAX_STEP = MAX_SCORE - MIN_SCORE  # the most one sample moves the gap between two vote sums
FIRST_ROUND = 2


class Adaptive(StrEnum):
    OFF = "off"  # draw all k (the default)
    DECIDED = "decided"  # stop when the ranking can no longer change
    CONFIDENT = "confident"  # ... or when the leader's lead passes a z test


class StopReason(StrEnum):
    DECIDED = "decided"  # the ranking could no longer change
    CONFIDENT = "confident"  # the confidence rule was met
    BUDGET = "budget"  # all k samples drawn


def rounds(k: int, first: int = FIRST_ROUND) -> list[tuple[int, int]]:
    """``[(start, end)]`` sample index ranges covering ``range(k)``: ``first`` samples, then
    rounds that double the total drawn, each at most ``max(first, k // 4)`` samples."""
    if k < 1 or first < 1:
        raise ValueError(f"k and first must be >= 1, got k={k}, first={first}")
    out, end = [(0, min(first, k))], min(first, k)
    while end < k:
        out.append((end, min(k, end + min(end, max(first, k // 4)))))
        end = out[-1][1]
    return out


def vote_sums(scores: Sequence[Sequence[int] | None], n: int) -> list[int]:
    """Sum of each response's scores over the valid samples (None = invalid)."""
    return [sum(s[i] for s in scores if s is not None) for i in range(n)]


def decided(sums: Sequence[int], remaining: int) -> bool:
    """True when no outcome of ``remaining`` more samples can change the order of ``sums``."""
    if len(sums) < 2:
        return False  # one response: nothing to rank, the mean still moves
    ordered = sorted(sums, reverse=True)
    return all(a - b > MAX_STEP * remaining for a, b in zip(ordered, ordered[1:]))


def confident(scores: Sequence[Sequence[int] | None], z: float) -> bool:
    """True when the leader by vote sum leads the runner-up in a one-sided z test over samples."""
    valid = [s for s in scores if s is not None]
    if len(valid) < 2 or len(valid[0]) < 2:
        return False
    sums = vote_sums(valid, len(valid[0]))
    order = sorted(range(len(sums)), key=lambda i: -sums[i])
    leader, runner_up = order[0], order[1]
    if sums[leader] == sums[runner_up]:
        return False
    d = [s[leader] - s[runner_up] for s in valid]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    return mean >= z * sd / math.sqrt(len(d))


def stop_reason(mode: Adaptive | str, scores: Sequence[Sequence[int] | None], k: int,
                z: float) -> StopReason | None:
    """Why an input drawn ``len(scores)`` of its ``k`` samples may stop now, or None to go on.

    ``scores`` holds each drawn sample's scores (original response order; None = invalid).
    """
    mode = Adaptive(mode)
    drawn = len(scores)
    if drawn >= k:
        return StopReason.BUDGET
    if mode is Adaptive.OFF or not scores:
        return None
    n = next((len(s) for s in scores if s is not None), 0)
    if n and decided(vote_sums(scores, n), k - drawn):
        return StopReason.DECIDED
    if mode is Adaptive.CONFIDENT and confident(scores, z):
        return StopReason.CONFIDENT
    return None
